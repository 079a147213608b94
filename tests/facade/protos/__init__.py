"""The facade's test proto, compiled when the tests run, and a gRPC server that echoes requests.

Nothing generated is committed: protoc (grpc_tools) writes a descriptor set, the test file
joins the default descriptor pool (so its `google.api.http` options resolve) and message
classes come from the pool.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

HERE = Path(__file__).parent
PROTO = "invmesh/testing/v1/transcoding.proto"
_REPO_PROTOS = HERE.parents[2] / "protos"  # invmesh/api/v1/rest.proto


@functools.cache
def test_file() -> FileDescriptor:
    """The test proto's descriptor, in the default pool (compiled and added once per session)."""
    from google.api import annotations_pb2  # registers google/api/*.proto in the default pool
    from grpc_tools import protoc

    from invmesh.api.v1 import rest_pb2  # registers the rest_response option

    assert annotations_pb2 and rest_pb2
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(PROTO)
    except KeyError:
        pass
    google_api_root = Path(annotations_pb2.__file__).parents[2]
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.pb"
        args = [
            "protoc",
            f"-I{HERE}",
            f"-I{_REPO_PROTOS}",
            f"-I{google_api_root}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            str(HERE / PROTO),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (compiled,) = files.file
    pool.AddSerializedFile(compiled.SerializeToString())
    return pool.FindFileByName(PROTO)


def service(name: str) -> ServiceDescriptor:
    return test_file().services_by_name[name]


def message_class(name: str) -> type[Message]:
    return GetMessageClass(test_file().message_types_by_name[name])


def _echo_handler(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """Each RPC answers what it received: the request itself when the RPC returns its request
    type, else an EchoReply naming the RPC and embedding the request."""
    handlers = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            functools.partial(_echo, method.name, response_class),
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def _echo(method: str, response_class: type[Message], request: Message, context: object) -> Message:
    if request.DESCRIPTOR is response_class.DESCRIPTOR:
        return request
    reply = response_class(method=method)
    reply.request.CopyFrom(request)
    return reply


@asynccontextmanager
async def echo_server(*names: str) -> AsyncIterator[str]:
    """A real grpc.aio server of the named test services on an ephemeral port; yields its address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_echo_handler(service(name)) for name in names])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
