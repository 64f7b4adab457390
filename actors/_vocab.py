"""Baton's vocabularies: each closed set of names it uses, defined once as a ``Literal``.

They reach clients (error codes), statistics and metrics, where people and programs match on
them; a new name is added here, and the type checker then shows every place that must know it.
"""

from __future__ import annotations

from typing import Literal

# The ``code`` of a ``StreamError``: why a stream ended without an answer.
StreamErrorCode = Literal[
    "all_providers_unavailable",  # no target of the route could answer (retryable)
    "upstream_rejected",  # the provider refused the request itself; its words are passed on
    "stream_diverged",  # a continuation could not be joined and the client cannot reset
    "overloaded",  # the route's outage queue is full (retryable)
    "cancelled",  # the client cancelled the stream
    "shutting_down",  # Baton is stopping (retryable)
    "internal_error",  # Baton failed while serving the stream (retryable)
    "client_too_slow",  # the client left the answer unread until the attempt's time ran out
]

# The ``code`` of a ``RequestError``: why a request was refused before any stream ran.
RequestErrorCode = Literal[
    "bad_request",  # the request is malformed; the message names the first thing wrong
    "unknown_model",  # no route of that name
    "unknown_stream",  # a cancel or resume named no stream it may reach (404 for a resume)
    "resume_unavailable",  # the events after the resume's seq were dropped from the log (410)
    "too_large",  # the request is larger than server.max_request_bytes
    "too_many_streams",  # the connection already runs its most streams (retryable)
    "rate_limit_exceeded",  # the client's requests_per_minute are used up (retryable)
    "shutting_down",  # Baton is stopping and takes no new streams (retryable)
    "unsupported",  # no target of the route can serve what the request needs (tools, audio...)
]

# What a request may need of a target beyond plain text (``actors._features``); a target that
# lacks one is skipped for that request, and ``[providers.NAME] supports`` overrides its kind's.
Capability = Literal[
    "tools",  # function tools, tool calls and tool results
    "vision",  # image_url content parts
    "audio",  # input_audio content parts
    "files",  # file content parts (PDF documents)
    "logprobs",  # logprobs / top_logprobs
    "json_schema",  # response_format json_schema / json_object
    "reasoning",  # reasoning_effort
]

# How a route sends tool calls to its clients.
ToolStreaming = Literal[
    "atomic",  # each call once complete, after its response finished: safe across failover
    "live",  # fragments as the provider sends them; a failure inside a call resets the answer
]

# Every error code a client of Baton's own protocol can see.
ErrorCode = Literal[StreamErrorCode, RequestErrorCode]

# How one upstream attempt ended (``AttemptStatistics.outcome``, ``AttemptOutcome.kind``).
AttemptEnd = Literal[
    "done",  # the answer is complete
    "failed",  # the upstream failed; the failure says how
    "diverged",  # the continuation could not be joined and the stream ended there
    "cancelled",  # the client left, or Baton is stopping
    "pool_full",  # no upstream slot freed up in time
    "lost",  # the other attempt of a hedge race won (or the hedge never had to start)
    "client_too_slow",  # max_stream_duration passed while it mostly waited for the client to read
]

# How a target is asked to go on with an answer another target began.
ContinuationForm = Literal["fresh", "prefill", "instruct", "replay"]

# Why the router has no target for an attempt (``Unavailable.reason``).
RefusalReason = Literal[
    "none_usable",  # no target of the route takes traffic now
    "exhausted",  # every target was tried
    "retry_budget",  # the route's retry budget is spent
]

# What an attempt's end means for its provider's health (``Report.outcome``).
ReportOutcome = Literal[
    "success",  # an answer: closes a half-open breaker, feeds the latency average
    "failure",  # the provider's fault: counts towards opening the breaker
    "rate_limited",  # the provider asked to be left alone for a while
    "abandoned",  # the client left, or the attempt lost a hedge race: no verdict
    "neutral",  # not the provider's fault (a client error, no slot, a diverged answer)
]

# How a stream ended (``StreamStatistics.outcome``, the ``outcome`` of the requests metric).
StreamEnd = Literal["done", StreamErrorCode]

# Which live traffic a provider takes now, by its breaker (``HealthSnapshot.traffic``): the one
# answer the router, ``admit``, ``/status``, ``/readyz`` and the metrics all give.
Traffic = Literal[
    "all",  # closed (healthy or degraded): every request
    "trial",  # probing, and a half-open trial place is free now
    "none",  # unhealthy, rate limited, or probing with no trial place free now
]

# What an active health probe's answer said (``HealthSnapshot.last_probe``).
ProbeVerdict = Literal[
    "ok",  # the provider answered the probe well
    "failed",  # the provider's fault: counts like a failed request
    "inconclusive",  # the probe's endpoint does not exist there (404, 405, 501): no verdict
]
