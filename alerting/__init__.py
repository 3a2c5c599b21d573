"""Alerts from anomalies: the rules that open, group and resolve them, and their delivery to Prometheus
Alertmanager (v2 API) and to signed webhooks (Alertmanager's webhook JSON, HMAC-SHA256), persisted in the
store until delivered. See docs/alerts.md."""
