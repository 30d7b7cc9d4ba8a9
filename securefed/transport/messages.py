"""The generated wire types under short names.

    from securefed.transport.messages import pb, secagg_pb, FederationStub
    stub = FederationStub(make_channel(...))
    stub.GetStatus(pb.GetStatusRequest(header=pb.RequestHeader(client_id="alice")))
"""

from __future__ import annotations

from securefed.transport._generated import federation_pb2 as pb
from securefed.transport._generated import federation_pb2_grpc as pb_grpc
from securefed.transport._generated import secagg_pb2 as secagg_pb
from securefed.transport._generated.federation_pb2_grpc import FederationServicer, FederationStub

__all__ = ["FederationServicer", "FederationStub", "pb", "pb_grpc", "secagg_pb"]
