"""Generates the `invmesh.*.v1` Python package from `protos/` (run by `make protos`).

The proto directory layout equals the package path, so the generated modules
import each other as `from invmesh.auth.v1 import ...` from anywhere: no
sys.path hacks and no import rewriting. `--check` regenerates into a scratch
folder and fails when the committed code has drifted from the protos.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = "invmesh"
INIT_TEXT = '"""Generated from protos/ by `make protos`: do not edit."""\n'


def proto_files() -> list[Path]:
    return sorted((PROTOS / PACKAGE).rglob("*.proto"))


def protoc(*outputs: str) -> None:
    """Runs protoc over our protos, resolving google/api and google/protobuf imports from the venv."""
    from google.api import annotations_pb2  # googleapis-common-protos ships google/api/*.proto beside it
    from grpc_tools import protoc  # a dev dependency: only code generation needs it

    google_api_root = Path(annotations_pb2.__file__).parents[2]
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{google_api_root}", f"-I{well_known}", *outputs]
    if protoc.main([*args, *(str(p) for p in proto_files())]) != 0:
        raise SystemExit("protoc failed")


def generate(out: Path) -> list[Path]:
    """Writes the generated package under `out`; returns the files written, relative to `out`."""
    # mypy-protobuf types the stubs and servicers (grpc.aio only) that --grpc_python_out leaves untyped.
    mypy_grpc = Path(sys.executable).with_name("protoc-gen-mypy_grpc")
    protoc(
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--mypy_grpc_out=only_async,generate_concrete_servicer_stubs,quiet:{out}",
    )
    for folder in [out / PACKAGE, *(p for p in (out / PACKAGE).rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__":
            (folder / "__init__.py").write_text(INIT_TEXT)
    return sorted(p.relative_to(out) for p in (out / PACKAGE).rglob("*") if p.is_file())


def drift() -> list[str]:
    """Names the generated files that are missing, extra, or differ from what the protos produce now."""
    with tempfile.TemporaryDirectory() as scratch:
        expected = set(generate(Path(scratch)))
        committed = {
            p.relative_to(ROOT)
            for p in (ROOT / PACKAGE).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        stale = expected ^ committed
        stale |= {
            p for p in expected & committed if not filecmp.cmp(Path(scratch) / p, ROOT / p, shallow=False)
        }
        return sorted(map(str, stale))


def lint() -> subprocess.CompletedProcess[str]:
    """Runs `buf lint` (protos/buf.yaml) on a descriptor image of our protos and their imports.

    buf cannot fetch its googleapis dependency offline, so protoc builds the image instead.
    """
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "image.binpb"
        protoc("--include_imports", "--include_source_info", f"--descriptor_set_out={image}")
        buf = Path(sys.executable).with_name("buf")
        return subprocess.run(
            [str(buf), "lint", str(image), "--config", str(PROTOS / "buf.yaml"), "--path", PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    parser.add_argument("--lint", action="store_true", help="run buf lint on the protos")
    args = parser.parse_args()
    if args.lint:
        result = lint()
        sys.exit(result.stdout + result.stderr if result.returncode else 0)
    if args.check:
        stale = drift()
        if stale:
            sys.exit("generated code is stale, run `make protos`: " + ", ".join(stale))
        print("generated code matches the protos")
    else:
        for path in generate(ROOT):
            print(path)


if __name__ == "__main__":
    main()
