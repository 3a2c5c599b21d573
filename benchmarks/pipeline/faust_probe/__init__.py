"""How fast can events get through a Faust app? Counting-only consumers in several Faust setups, next to raw
aiokafka and confluent-kafka loops (``python -m benchmarks.pipeline.faust_probe.probe --events 200000``).

``batching`` holds the fetch-batch delivery (one event per partition per fetch) that the probe measures.
"""
