"""Prometheus export of the stats: the naming rules (:mod:`.mapping`), reading a VM for a
scrape (:mod:`.reading`), the prometheus_client collector (:mod:`.collector`) and the
HTTP endpoint (:mod:`.http`)."""
