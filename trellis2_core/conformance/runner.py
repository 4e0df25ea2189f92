"""Golden-case runner: ``python -m trellis2_core.conformance DIR [--only NAME ...] [--aux]``.

Runs every case of ``DIR/index.json`` (``cases: {name: kind}``) through the handler of its kind, compares the
candidate tensors with the golden ones (``compare.py``) and prints one line per case, then a NEAR summary line and
finally exactly ``N passed, M failed`` (NEAR counts as failed). Exit status 0 only when every case passed.
Models for ``case.model(key)`` come from ``DIR/<params.pipeline_dir>`` (``tiny-pipeline`` by default), each loaded
once per run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from torch import Tensor, nn

from ..errors import InputError
from ..loading import ModelStore
from .case import Case, load_case
from .compare import FAIL, NEAR, PASS, compare_case

__all__ = ["HANDLERS", "CaseResult", "Runner", "main"]

logger = logging.getLogger(__name__)

# golden kind -> (module in this package, handler function); modules are imported only when a case needs them
HANDLERS: dict[str, tuple[str, str]] = {
    "dinov3": ("cases_inputs", "run_dinov3"),
    "preprocess": ("cases_inputs", "run_preprocess"),
    "dit_dense": ("cases_dit", "run_dit_dense"),
    "dit_sparse": ("cases_dit", "run_dit_sparse"),
    "sampler": ("cases_dit", "run_sampler"),
    "ss_decoder": ("cases_decoders", "run_ss_decoder"),
    "shape_decoder": ("cases_decoders", "run_shape_decoder"),
    "mesher": ("cases_decoders", "run_mesher"),
    "tex_decoder": ("cases_decoders", "run_tex_decoder"),
    "cascade": ("cases_decoders", "run_cascade"),
    "pipeline": ("cases_pipeline", "run_pipeline"),
    "mesh_to_fdg": ("cases_texturing", "run_mesh_to_fdg"),
    "shape_encoder": ("cases_texturing", "run_shape_encoder"),
    "texturing": ("cases_texturing", "run_texturing"),
}
DEFAULT_PIPELINE_DIR = "tiny-pipeline"

Handler = Callable[[Case], Mapping[str, Tensor]]


class _HandlerMissing(Exception):
    """No handler can be had for a case kind (the reason is the message)."""


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: verdict PASS/NEAR/FAIL, wall time, and a one-line reason or worst error."""

    name: str
    kind: str
    verdict: str
    seconds: float
    detail: str

    def line(self) -> str:
        return f"{self.verdict} {self.name} ({self.kind}) {self.seconds:.2f}s {self.detail}".rstrip()


def _tolerance_rule(kind: str) -> Callable[[dict], dict] | None:
    """The optional ``TOLERANCE_RULES[kind]`` of the kind's handler module: golden metadata → metadata whose
    tolerances follow the golden set's README where the json only stores a rounded value."""
    module_name = HANDLERS.get(kind, (None,))[0]
    if module_name is None:
        return None
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, "TOLERANCE_RULES", {}).get(kind)


def _load_handler(kind: str) -> Handler:
    try:
        module_name, func = HANDLERS[kind]
    except KeyError:
        raise _HandlerMissing(f"no handler for kind {kind!r} (known: {', '.join(sorted(HANDLERS))})") from None
    qualified = f"{__package__}.{module_name}"
    try:
        module = importlib.import_module(qualified)
    except ImportError as err:
        raise _HandlerMissing(f"handler module {qualified} not available ({type(err).__name__}: {err})") from err
    handler = getattr(module, func, None)
    if not callable(handler):
        raise _HandlerMissing(f"{qualified} has no handler function {func}()")
    return handler


class Runner:
    """Runs golden cases of one directory; caches one ``ModelStore`` per pipeline folder for the whole run."""

    def __init__(self, directory: str | Path, *, aux: bool = False, near_overlap: float = 0.999,
                 default_pipeline_dir: str = DEFAULT_PIPELINE_DIR, verbose: bool = False) -> None:
        self.directory = Path(directory)
        self.aux = aux
        self.near_overlap = near_overlap
        self.default_pipeline_dir = default_pipeline_dir
        self.verbose = verbose
        self._stores: dict[Path, ModelStore] = {}

    def index(self) -> dict[str, str]:
        """``{case name: kind}`` from ``index.json``."""
        path = self.directory / "index.json"
        try:
            cases = json.loads(path.read_text())["cases"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: cannot read the case list ({type(err).__name__}: {err}); pass the golden "
                             "folder that holds index.json") from err
        if not isinstance(cases, dict):
            raise InputError(f"{path}: 'cases' must map case names to kinds; regenerate index.json")
        return {str(k): str(v) for k, v in cases.items()}

    def _store(self, pipeline_dir: Path) -> ModelStore:
        store = self._stores.get(pipeline_dir)
        if store is None:
            store = ModelStore(pipeline_dir, device="cpu")
            self._stores[pipeline_dir] = store
        return store

    def run_case(self, name: str, kind: str) -> CaseResult:
        """Run and check one case; never raises for a failing handler (that is a FAIL line)."""
        start = time.perf_counter()
        try:
            handler = _load_handler(kind)
            case: Case | None = None

            def model(key: str) -> nn.Module:
                assert case is not None
                sub = case.params.get("pipeline_dir", self.default_pipeline_dir)
                return self._store(self.directory / sub).get(key)

            case = load_case(self.directory, name, kind, model)
            candidate = handler(case)
            if not isinstance(candidate, Mapping):
                raise InputError(f"handler returned {type(candidate).__name__}, expected a dict of tensors")
            golden = {**case.inputs, **case.expected}
            rule = _tolerance_rule(kind)
            meta = rule(case.meta) if rule is not None else case.meta
            result = compare_case(golden, candidate, meta, aux=self.aux, near_overlap=self.near_overlap)
            verdict, detail = result.verdict, result.summary()
        except _HandlerMissing as err:
            verdict, detail = FAIL, str(err)
        except Exception as err:  # noqa: BLE001 - a broken case is reported as FAIL, the run goes on
            if self.verbose:
                traceback.print_exc(file=sys.stderr)
            logger.debug("case %s raised", name, exc_info=True)
            first = str(err).splitlines()[0] if str(err) else ""
            verdict, detail = FAIL, f"{type(err).__name__}: {first}"
        return CaseResult(name, kind, verdict, time.perf_counter() - start, detail)

    def run(self, only: Sequence[str] | None = None, out: TextIO | None = None) -> list[CaseResult]:
        """Run the cases (all, or those named in ``only`` in index order) printing one line each to ``out``."""
        out = out or sys.stdout
        index = self.index()
        if only:
            unknown = [n for n in only if n not in index]
            if unknown:
                raise InputError(f"--only: unknown case(s) {', '.join(unknown)}; known: {', '.join(index)}")
            index = {k: v for k, v in index.items() if k in set(only)}
        results = []
        for name, kind in index.items():
            res = self.run_case(name, kind)
            results.append(res)
            print(res.line(), file=out, flush=True)
        return results


def summary_lines(results: Sequence[CaseResult]) -> list[str]:
    """The NEAR summary line and the closing ``N passed, M failed`` line."""
    near = [r.name for r in results if r.verdict == NEAR]
    passed = sum(r.verdict == PASS for r in results)
    near_line = f"NEAR: {len(near)} (counted as failed)" + (f": {', '.join(near)}" if near else "")
    return [near_line, f"{passed} passed, {len(results) - passed} failed"]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 all PASS, 1 any NEAR/FAIL, 2 usage error)."""
    ap = argparse.ArgumentParser(prog="python -m trellis2_core.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", help="golden directory holding index.json and the <case>.{json,safetensors}")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these cases")
    ap.add_argument("--aux", action="store_true", help="also compare aux.* tensors the handlers return")
    ap.add_argument("--pipeline-dir", default=DEFAULT_PIPELINE_DIR,
                    help="pipeline folder (inside DIR) for cases whose params name none (default: %(default)s)")
    ap.add_argument("--near-overlap", type=float, default=0.999, help="row overlap needed for NEAR")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing handlers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    runner = Runner(args.directory, aux=args.aux, near_overlap=args.near_overlap,
                    default_pipeline_dir=args.pipeline_dir, verbose=args.verbose)
    try:
        results = runner.run(args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in summary_lines(results):
        print(line, flush=True)
    return 0 if results and all(r.verdict == PASS for r in results) else 1
