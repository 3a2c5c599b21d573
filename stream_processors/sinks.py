"""The worker's two sinks, as ``pipeline.Sink`` s: what a batch of each topic becomes in the store.

- ``InferenceRows`` (``recwatch.inference.v1``): stage = the raw rows (``InferenceSink.stage``: on chDB the
  engine parses and stores them and computes the window deltas); complete = the window rows
  (``InferenceSink.complete``) and then the predictions into the feedback join (``FeedbackSink``).
- ``FeedbackRows`` (``recwatch.feedback.v1``): complete = the feedback rows and business windows.

One batch's path: ``faust_adapter`` -> ``pipeline`` -> ``sinks`` -> ``inference_sink`` -> ``protobuf_ingest`` ->
the store, then ``feedback_sink`` -> ``attribution`` -> the store. No module on it imports one before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from stream_processors.decode import Rejected
from stream_processors.feedback_sink import FeedbackSink
from stream_processors.inference_sink import InferenceSink, Staged
from stream_processors.pipeline import Written
from stream_processors.records import Record

__all__ = ["FeedbackRows", "InferenceRows"]


class InferenceRows:
    def __init__(self, inference: InferenceSink, join: FeedbackSink) -> None:
        self.inference = inference
        self.join = join

    def knows(self, partitions: frozenset[int]) -> bool:
        return self.inference.knows(partitions) and self.join.knows(partitions)

    def prepare(self, partitions: frozenset[int]) -> None:
        self.inference.prepare(partitions)
        self.join.prepare(partitions)  # before the partition's first batch is stored: not replayed in the rebuild

    def stage(self, records: Sequence[Record]) -> Staged:
        return self.inference.stage(records)

    def staged_rejects(self, staged: Staged) -> list[Rejected]:
        return staged.result.rejected

    def complete(self, staged: Staged) -> Written:
        result = self.inference.complete(staged)
        business = self.join.write_batch(inference=result.decoded, predictions=result.predictions)
        return Written(
            rows=result.events_written,
            duplicates=result.duplicates_skipped,
            detail=f"{result.windows_written} windows, {business.windows_written} business windows",
        )

    def forget(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        self.inference.forget_partitions(partitions)
        self.join.forget_partitions(partitions)


class FeedbackRows:
    def __init__(self, join: FeedbackSink) -> None:
        self.join = join

    def knows(self, partitions: frozenset[int]) -> bool:
        return True  # (the join reads a partition's state itself on its first batch)

    def prepare(self, partitions: frozenset[int]) -> None:
        pass

    def stage(self, records: Sequence[Record]) -> Sequence[Record]:
        return records

    def staged_rejects(self, staged: Sequence[Record]) -> list[Rejected]:
        return []

    def complete(self, staged: Sequence[Record]) -> Written:
        result = self.join.write_batch(feedback=staged)
        return Written(
            rows=result.feedback_written,
            duplicates=result.duplicates_skipped,
            rejected=result.rejected,
            detail=f"{result.windows_written} business windows",
        )

    def forget(self, partitions: Iterable[int]) -> None:
        self.join.forget_partitions(partitions)
