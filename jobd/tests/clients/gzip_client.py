"""A third-party gRPC client of jobd: grpcio, compressing everything it sends with gzip.

Usage: gzip_client.py STUBS_DIR HOST:PORT CA CERT KEY

Starts `true`, then lists the caller's jobs, over mutual TLS with the given client
certificate. Prints the started job's id and the listed ids as one JSON object; any
failure is an exception and a non-zero exit.
"""

import json
import sys

stubs, target, ca, cert, key = sys.argv[1:6]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
import service_pb2  # noqa: E402
import service_pb2_grpc  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


credentials = grpc.ssl_channel_credentials(
    root_certificates=read(ca),
    private_key=read(key),
    certificate_chain=read(cert),
)
with grpc.secure_channel(target, credentials, compression=grpc.Compression.Gzip) as channel:
    stub = service_pb2_grpc.JobServiceStub(channel)
    started = stub.Start(service_pb2.StartRequest(argv=["true"]), timeout=20)
    listed = stub.List(service_pb2.ListRequest(), timeout=20)
    print(json.dumps({
        "started": started.job_id,
        "listed": [job.job_id for job in listed.jobs],
    }))
