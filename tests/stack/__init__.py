"""Static checks of the observability stack: compose file, collector, Prometheus, Grafana, dashboards."""
