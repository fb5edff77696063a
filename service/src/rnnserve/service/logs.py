"""Logging of the server processes, set up once for `rnnserve serve` and for each worker.

- Text lines (`%(asctime)s LEVEL logger: message`) or JSON lines (`--log-format json`) with
  stable keys: time, level, logger, message, pid, and request_id, exception and the access
  fields when they apply.
- The request being answered: front ends set `REQUEST_ID`, and every line logged while
  answering it carries the id.
- The access log (`rnnserve.access`, `--access-log`): one line per request, written by
  service/access.py; off, its logger drops the lines before they are formatted.
- `OncePerCause`: a warning given once per cause (an unknown request parameter, a missing
  execution provider), however often the cause comes back.
- A client gone before its answer was sent is one line, not grpc.aio's traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Hashable
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# The id of the request the current task answers ("" outside a request). Each request runs
# in a task of its own, so a front end sets it and never needs to reset it.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
ACCESS = logging.getLogger("rnnserve.access")
# Fields of an access-log line: log.info(message, extra={FIELDS: {...}}).
FIELDS = "fields"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The classic line, with the request id appended to lines logged inside a request."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        if request_id and FIELDS not in record.__dict__:  # access lines name it already
            line += f" [request {request_id}]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            entry["request_id"] = request_id
        entry.update(record.__dict__.get(FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _add_request_id(record: logging.LogRecord) -> bool:
    record.request_id = REQUEST_ID.get()
    return True


_GONE = "ExecuteBatchError raised in core by servicer method "


def _one_line_when_gone(record: logging.LogRecord) -> bool:
    """grpc.aio logs an ERROR with a traceback when it could not send an answer because
    its client went away (cancelled, disconnected) before it noticed: a line of INFO."""
    if isinstance(record.msg, str) and record.msg.startswith(_GONE):
        record.args = (record.msg[len(_GONE) :],)  # the method, in brackets
        record.msg = "a client went away before its answer was sent: %s"
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
    return True


def configure(level: str, log_format: LogFormat, access_log: bool, worker: bool = False) -> None:
    """Sends every log line to stderr in `log_format`, from `level` up; the access log's
    lines (INFO) whenever `access_log` is on, whatever the level."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(WORKER_TEXT_FORMAT if worker else TEXT_FORMAT))
    handler.addFilter(_add_request_id)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    ACCESS.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    logging.getLogger("grpc._cython.cygrpc").addFilter(_one_line_when_gone)


class OncePerCause:
    """Warns once per cause. Some causes come from clients (parameter names), so at most
    `limit` are remembered; past that, one last warning says that no more are reported."""

    def __init__(self, logger: logging.Logger, limit: int = 1000) -> None:
        self._logger = logger
        self._limit = limit
        self._seen: set[Hashable] = set()

    def warn(self, cause: Hashable, message: str, *args: object) -> None:
        if cause in self._seen or len(self._seen) > self._limit:
            return
        self._seen.add(cause)
        if len(self._seen) > self._limit:
            self._logger.warning(
                "more than %d causes of warnings: no more are reported", self._limit
            )
            return
        self._logger.warning(message, *args)
