"""HTTP tasks: ``wf.http(name, url, method=, headers=, body=, expect=)``, checked when the workflow is built.

The task runs on the agent's ``http`` runtime: its command is the URL and the request
travels as plain data in ``runtime_options``. A ``workflow://`` body is also a declared
input, so the file is staged (and the producer becomes a dependency) like any input.
Secrets belong in ``secret://NAME`` placeholders (in header values or the URL): they
are resolved on the agent only.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final

from dagon.core._errors import ValidationError
from dagon.core._refs import check_relative_path, find_references

__all__ = ["HTTP_METHODS", "http_options", "http_task_fields"]

HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _fail(task: str, message: str) -> ValidationError:
    return ValidationError(f"task {task!r}: {message}", tasks=[task])


def http_options(
    task: str,
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    expect: int | Iterable[int] | None = None,
    output: str = "response",
    retries: int = 3,
    backoff: float = 0.5,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The ``runtime_options`` and extra ``inputs`` of an HTTP task.

    Args:
        task: the task's name (for messages).
        url: ``http://`` or ``https://`` URL (``secret://NAME`` placeholders allowed).
        method: the HTTP method.
        headers: request headers; values may hold ``secret://NAME``.
        body: a ``workflow://`` reference (the file is sent), a ``str`` (sent as text),
            or JSON data (``dict``/``list``/numbers, sent as ``application/json``).
        expect: the status (or statuses) that count as success; default any 2xx.
        output: file in the task directory that receives the response body.
        retries: further tries after a 5xx answer or a connection error.
        backoff: first delay between tries in seconds (doubles, capped, jittered).

    Raises:
        ValidationError: what to change, naming the task.
    """
    if not isinstance(url, str) or not url.strip():
        raise _fail(task, "an HTTP task needs a URL")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _fail(task, f"the URL must start with http:// or https://, got {url!r}")
    verb = method.upper() if isinstance(method, str) else ""
    if verb not in HTTP_METHODS:
        raise _fail(task, f"method must be one of {', '.join(sorted(HTTP_METHODS))}, got {method!r}")
    options: dict[str, Any] = {"method": verb}
    if headers:
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k.strip() for k, v in headers.items()
        ):
            raise _fail(task, "headers must map header names to strings")
        for key, value in headers.items():
            if any(c in key + value for c in "\r\n\0") or ":" in key:
                raise _fail(task, f"header {key!r} must be one line without ':' in its name")
        options["headers"] = dict(headers)
    inputs: tuple[str, ...] = ()
    if isinstance(body, str) and body.startswith("workflow://"):
        found = find_references(body, task=task)
        if len(found) != 1 or found[0].text != body:
            raise _fail(task, f"body {body!r} is not a single workflow:// reference")
        options["body_file"] = body
        inputs = (body,)
    elif isinstance(body, str):
        options["body_text"] = body
    elif body is not None:
        if not isinstance(body, dict | list | int | float | bool):
            raise _fail(task, f"body must be a workflow:// reference, a string or JSON data, got {type(body).__name__}")
        options["json"] = body
    if expect is not None:
        statuses = [expect] if isinstance(expect, int) else list(expect)
        if not statuses or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise _fail(task, f"expect must be HTTP statuses (100-599), got {expect!r}")
        options["expect"] = statuses
    if output != "response":
        check_relative_path(output, what="HTTP output", task=task)
        if output.split("/")[0] == ".dagon":
            raise _fail(task, "the HTTP output cannot be under .dagon")
        options["output"] = output
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _fail(task, f"retries must be a whole number >= 0, got {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
        raise _fail(task, f"backoff must be seconds >= 0, got {backoff!r}")
    options.update(retries=retries, backoff=backoff)
    return options, inputs


_HTTP_ARGS: Final = ("method", "headers", "body", "expect", "output", "retries", "backoff")


def http_task_fields(task: str, url: str, **options: Any) -> dict[str, Any]:
    """The :class:`~dagon.core.Task` fields of ``wf.http(task, url, **options)``.

    ``options`` are :func:`http_options`' arguments (``method``, ``headers``, ``body``,
    ``expect``, ``output``, ``retries``, ``backoff``) and Task fields (``after``,
    ``timeout``, ``labels``, ``inputs``, …).

    Raises:
        ValidationError: what to change, naming the task.
    """
    request = {k: options.pop(k) for k in _HTTP_ARGS if k in options and options[k] is not None}
    runtime_options, inputs = http_options(task, url, **request)
    extra = tuple(options.pop("inputs", ()))
    return {"command": url.strip(), "runtime": "http", "inputs": (*inputs, *extra),
            "runtime_options": runtime_options, **options}  # fmt: skip
