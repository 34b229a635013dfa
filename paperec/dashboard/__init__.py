"""``paperec dashboard``: the local web page of the metrics (app), its queries, page and charts,
and the Grafana dashboard generated from the same queries."""
