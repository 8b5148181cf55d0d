"""Builds the package with the gRPC stubs generated from proto/ (the
repository's contracts, or WARDEN_PROTO_DIR): they are written into the
build as the `warden` package (`warden.policy.v1.policy_pb2`, ...), next
to `warden_client`."""

import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        proto = pathlib.Path(os.environ.get("WARDEN_PROTO_DIR", HERE.parent.parent / "proto")).resolve()
        if not proto.is_dir():
            raise SystemExit(f"warden-client: no proto directory at {proto} (set WARDEN_PROTO_DIR)")
        files = sorted(str(p) for p in proto.rglob("*.proto"))
        out = pathlib.Path(self.build_lib)
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{proto}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
        if protoc.main(args) != 0:
            raise SystemExit("warden-client: protoc failed")
        # Every generated directory is a package.
        for directory in {p.parent for p in out.joinpath("warden").rglob("*_pb2.py")}:
            while directory != out:
                directory.joinpath("__init__.py").touch()
                directory = directory.parent


setup(cmdclass={"build_py": BuildWithStubs})
