"""ModelInfer's handler: its request received within the memory budget
(service/dataplane/budget.py), then answered as every unary RPC is (answering.py), all in
compiled code: the path of every step.

grpc.aio receives a unary call's message before its handler runs, whole, in its core: N
clients sending large messages at once put N of them in memory, whatever the budget says
of each afterwards. ModelInfer is served here as a client-streaming method instead (the
same on the wire: a unary call sends one message), which reads its message once the budget
has room for the largest the server receives (`max_received_bytes`; gRPC tells a message's
size only once it is in): the number of messages received at once follows from the budget.
A call waiting for its turn holds no more than its HTTP/2 stream window (frontend.py keeps
that small). Once in, the message holds its own size until the call ends.

A message must be in within `request_body_timeout_s` of the call's start: a call that waited
that long for room is refused RESOURCE_EXHAUSTED (retry later), one whose client had not
sent its message by then DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from rnnserve.protocol import messages as pb
from rnnserve.service.access import Call, sequence_id_of
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.dataplane.budget import Arrival
from rnnserve.service.errors import DeadlineExceeded, InvalidArgument, ServiceError
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context
from rnnserve.service.stalls import Stalls


class ReceivedModelInfer:
    """ModelInfer's handler: its message received within the budget, then answered."""

    def __init__(self, answering: Answering, dataplane: DataPlane) -> None:
        self._answering = answering
        self._dataplane = dataplane
        self._budget = dataplane.budget
        self._largest = dataplane.settings.max_received_bytes
        self._stalls = Stalls(dataplane.settings.request_body_timeout_s)

    def handler(self) -> grpc.RpcMethodHandler[bytes, Any]:
        return grpc.stream_unary_rpc_method_handler(
            self._call, response_serializer=pb.ModelInferResponse.SerializeToString
        )

    async def _call(self, messages: AsyncIterator[bytes], context: Context) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._stalls.watch(task)
        try:
            arrival = self._budget.receive_now(self._largest)
            if arrival is None:  # in line for room, within the time the message has
                arrival = await self._stalls.within(
                    task, self._budget.receive(self._largest), self._no_room
                )
            with arrival:  # its bytes go once the message is dropped
                return await self._answer(task, arrival, context)
        except ServiceError as error:  # the servicer answers its own
            return self._refuse(context, error)
        finally:
            self._stalls.forget(task)

    async def _answer(self, task: asyncio.Task[Any], arrival: Arrival, context: Context) -> Any:
        raw = await self._stalls.within(task, context.read(), self._too_late)
        self._stalls.forget(task)  # in: the request takes as long as it needs
        if raw is grpc.aio.EOF:
            raise InvalidArgument("the call carried no request message")
        arrival.arrived(len(raw))
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError:
            raise InvalidArgument("the request message is not a ModelInferRequest") from None
        del raw  # parsed: the request holds its own copy

        async def work(call: Call) -> Any:
            infer_request = converter.request_from_proto(request, call.principal)
            call.sequence_id = sequence_id_of(infer_request.parameters)
            response = await self._dataplane.infer(infer_request)
            return converter.response_to_proto(response, converter.sends_contents(request))

        return await self._answering.answer(
            "ModelInfer", request.model_name, request.model_version, context, work, request.id
        )

    def _no_room(self) -> ServiceError:
        return self._budget.waited(self._largest)

    def _too_late(self) -> ServiceError:
        return DeadlineExceeded(
            f"the request's message did not arrive within {self._stalls.timeout_s:g} s "
            "(request_body_timeout_s)"
        )

    def _refuse(self, context: Context, error: ServiceError) -> None:
        """Recorded and answered as `Answering` answers a refusal (a status, no message)."""
        error.__traceback__ = None  # it would keep the frames, and the message, alive
        with self._answering.recorder.call("ModelInfer") as call:
            call.code = error.code
        context.set_code(grpc.StatusCode[error.code])
        context.set_details(error.message)
        return None
