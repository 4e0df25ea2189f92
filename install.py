"""ComfyUI-Manager install hook: installs the pack's Python dependencies (nothing is compiled)."""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
subprocess.check_call([sys.executable, "-m", "pip", "install", "-r", os.path.join(here, "requirements.txt")])
