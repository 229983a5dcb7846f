"""Ingest: Label Studio's webhooks into the durable event log, and the log folded into labels.

POST /webhook (webhooks) -> writer process or in-process writer (writer_*, eventlog) -> events
-> fold (payloads, fold, fold_loop) -> tasks, annotations, projects. Nothing here imports torch
or the training modules: an annotator's submit waits on this path.
"""
