"""A stock gRPC-core client (Python grpcio) against metalbondd's Unix socket.

Run by tests/e2e_api_authority.rs (and usable by hand):

    python3 tests/python/grpc_unix_client.py /run/metalbondd/api.sock

The channel keeps grpcio's DEFAULT :authority (for a `unix:` target gRPC core
sends the socket path, which h2 0.4 used to reject with RST_STREAM
PROTOCOL_ERROR; see docs/adr/0012-any-grpc-authority.md). No generated code
and no protoc: the metalbondd messages are built from the descriptors the
daemon serves over reflection, as grpcurl does.

Prints one line per check and exits non-zero with the gRPC error on failure.
"""

import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

# v1 and v1alpha reflection have the same messages; grpcio-reflection ships
# the v1alpha module only, so v1 is called by its method path.
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}
TIMEOUT = 10


def reflect(channel, version, request):
    call = channel.stream_stream(
        REFLECTION[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (reply,) = list(call(iter([request]), timeout=TIMEOUT))
    if reply.HasField("error_response"):
        raise SystemExit(f"reflection {version}: {reply.error_response}")
    return reply


def well_known(name):
    """A google/protobuf/*.proto file from the protobuf runtime: the daemon's
    reflection serves its own files, not the well-known types they import."""
    from google.protobuf import duration_pb2, timestamp_pb2  # noqa: F401 (registers them)

    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
    return proto


def load_pool(channel, symbol):
    """A descriptor pool with the file defining `symbol` and its imports."""
    reply = reflect(
        channel, "v1", reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    files = {
        f.name: f
        for f in map(
            descriptor_pb2.FileDescriptorProto.FromString,
            reply.file_descriptor_response.file_descriptor_proto,
        )
    }
    for f in list(files.values()):
        for dep in f.dependency:
            if dep not in files:
                files[dep] = well_known(dep)
    pool = descriptor_pool.DescriptorPool()
    added = set()
    for _ in range(len(files)):  # dependencies first, whatever the reply's order
        for f in files.values():
            if f.name not in added and all(d in added for d in f.dependency):
                pool.Add(f)
                added.add(f.name)
    return pool


def unary(channel, pool, method, request_type, response_type):
    req_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(request_type))
    resp_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(response_type))
    call = channel.unary_unary(
        method,
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    return req_cls, lambda req: call(req, timeout=TIMEOUT)


def main():
    socket = sys.argv[1]
    # The default authority: no grpc.default_authority option.
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        for version in ("v1", "v1alpha"):
            reply = reflect(
                channel, version, reflection_pb2.ServerReflectionRequest(list_services="")
            )
            names = sorted(s.name for s in reply.list_services_response.service)
            print(f"reflection {version}: {' '.join(names)}")

        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "metalbondd.v1.RouteService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            print(f"health {service or '(server)'}: {name}")

        pool = load_pool(channel, "metalbondd.v1.RouteService")
        pkg = "metalbondd.v1"
        announce_req, announce = unary(
            channel,
            pool,
            f"/{pkg}.RouteService/AnnounceRoutes",
            f"{pkg}.AnnounceRoutesRequest",
            f"{pkg}.AnnounceRoutesResponse",
        )
        req = announce_req()
        route = req.routes.add(vni=23, prefix="10.0.99.0/24")
        route.next_hop.address = "2001:db8::99"
        route.next_hop.type = pool.FindEnumTypeByName(f"{pkg}.RouteType").values_by_name[
            "ROUTE_TYPE_NAT"
        ].number
        route.next_hop.nat_port_from = 1024
        route.next_hop.nat_port_to = 2047
        print(f"announce: added={announce(req).added}")

        list_req, list_routes = unary(
            channel,
            pool,
            f"/{pkg}.RouteService/ListRoutes",
            f"{pkg}.ListRoutesRequest",
            f"{pkg}.ListRoutesResponse",
        )
        for entry in list_routes(list_req()).routes:
            r, hop = entry.route, entry.route.next_hop
            print(
                f"route: {r.vni}#{r.prefix}@{hop.address} type={hop.type} "
                f"nat={hop.nat_port_from}-{hop.nat_port_to}"
            )

        status_req, get_status = unary(
            channel,
            load_pool(channel, f"{pkg}.DaemonService"),
            f"/{pkg}.DaemonService/GetStatus",
            f"{pkg}.GetStatusRequest",
            f"{pkg}.Status",
        )
        status = get_status(status_req())
        print(f"status: version={status.version} routes={status.routes}")

        fleet_req, get_fleet = unary(
            channel,
            load_pool(channel, f"{pkg}.FleetService"),
            f"/{pkg}.FleetService/GetFleet",
            f"{pkg}.GetFleetRequest",
            f"{pkg}.Fleet",
        )
        fleet = get_fleet(fleet_req())
        me = fleet.members[0]
        digests = " ".join(f"{v.vni}={v.routes}/{v.digest}" for v in me.vnis)
        print(
            f"fleet: source={fleet.source} members={len(fleet.members)} "
            f"disagreeing={len(fleet.disagreeing_vnis)} digests {digests}"
        )


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        raise SystemExit(f"gRPC error: {e.code()} {e.details()}")
