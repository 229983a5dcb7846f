"""Web: what answers people and Label Studio besides webhooks.

The control API, the status page (page, page_html, charts) and its JSON (status), /metrics,
the ML-backend protocol (mlbackend), and the checks of tokens and secrets (auth).
"""
