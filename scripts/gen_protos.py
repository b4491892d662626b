"""Generate the Python gRPC code for every proto under protos/ into gen/ (ignored by git)."""

import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "gen"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    OUT.mkdir(exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for package_dir in {OUT / Path(p).parent for p in protos} | {OUT / "nlfpipe"}:
        d = package_dir
        while d != OUT:
            (d / "__init__.py").touch()
            d = d.parent
    return 0


if __name__ == "__main__":
    sys.exit(main())
