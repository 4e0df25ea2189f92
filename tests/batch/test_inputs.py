"""Which images a batch takes, the GLB name each gets (sanitised, collisions resolved) and its seed."""
from __future__ import annotations

from pathlib import Path

import pytest

from trellis2_core.batch.inputs import find_images, image_seed, output_names, plan_inputs
from trellis2_core.errors import InputError


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_images_by_extension_sorted_hidden_and_subfolders_skipped(tmp_path):
    _touch(tmp_path, "b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c.webp")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]


@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_bad_input_folders_are_one_line_errors(tmp_path, case):
    target = tmp_path / "in"
    if case == "file":
        target.write_bytes(b"x")
    elif case == "empty":
        target.mkdir()
        _touch(target, "readme.txt")
    expect = {"missing": "does not exist", "file": "is a file, not a folder", "empty": "holds no image"}[case]
    with pytest.raises(InputError, match=expect) as err:
        find_images(target, "INPUT_DIR")
    assert str(err.value).startswith("INPUT_DIR") and "\n" not in str(err.value)


def test_names_are_sanitised():
    names = output_names([Path("in/My Photo (1).png"), Path("in/../..evil.jpg"), Path("in/con.png"),
                          Path("in/Äpfel.webp"), Path("in/???.png")])
    assert names == ["My_Photo_1.glb", "evil.glb", "_con.glb", "Äpfel.glb", "image.glb"]
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_collisions_get_the_extension_then_a_counter():
    paths = [Path(n) for n in ("a.png", "a.jpg", "A.webp", "x y.png", "x_y.png", "a_png.tif")]
    names = output_names(paths)
    assert names[:3] == ["a_png.glb", "a_jpg.glb", "A_webp.glb"]
    assert names[3:5] == ["x_y_png.glb", "x_y_png_2.glb"]  # same stem and same extension: a counter
    assert names[5] == "a_png_2.glb"  # the appended name met another file's stem
    assert len({n.lower() for n in names}) == len(names)


def test_names_depend_only_on_the_set_of_inputs(tmp_path):
    _touch(tmp_path, "b.png", "a.png", "a.jpg")
    _, first = plan_inputs(tmp_path, 42, False)
    _, second = plan_inputs(tmp_path, 42, False)
    assert [(i.key, i.output) for i in first] == [(i.key, i.output) for i in second]
    assert {i.key: i.output for i in first} == {"a.jpg": "a_jpg.glb", "a.png": "a_png.glb", "b.png": "b.glb"}


def test_seed_policy():
    assert image_seed(7, "a.png", False) == 7 == image_seed(7, "b.png", False)
    a, b = image_seed(7, "a.png", True), image_seed(7, "b.png", True)
    assert a != b and a == image_seed(7, "a.png", True) and 0 <= a < 2 ** 63
    assert image_seed(8, "a.png", True) != a


def test_explicit_list_of_files(tmp_path):
    _touch(tmp_path, "a.png")
    root, items = plan_inputs([tmp_path / "a.png", tmp_path / "missing.png"], 1, False)
    assert root is None and [i.output for i in items] == ["a.glb", "missing.glb"]
    with pytest.raises(InputError, match="listed twice"):
        plan_inputs([tmp_path / "a.png", tmp_path / "a.png"], 1, False)
    with pytest.raises(InputError, match="empty"):
        plan_inputs([], 1, False)
