"""Logs, metrics, health probes and traces of the AgentVault server.

- ``logging``: structured JSON log lines that carry only allow-listed fields;
- ``metrics``: the Prometheus metric objects every app increments;
- ``views``: ``/metrics``, ``/healthz`` and ``/readyz``;
- ``middleware``: the request log line and the probe short-cut;
- ``tracing``: optional OpenTelemetry, on only when an OTLP endpoint is set.
"""
