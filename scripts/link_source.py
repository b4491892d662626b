"""Puts the checkout and its generated code on the venv's import path (a .pth file).

The editable install maps only the packages that existed when it ran; a path entry also
covers packages added later (orchestrator, tests) and the generated `nlfpipe.*` modules.
"""

import site
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    pth = Path(site.getsitepackages()[0], "nlfpipe_source.pth")
    pth.write_text(f"{ROOT}\n{ROOT / 'gen'}\n")
    Path(site.getsitepackages()[0], "nlfpipe_gen.pth").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
