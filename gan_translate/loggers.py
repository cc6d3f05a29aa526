"""Loggers of our own: a CSV logger that keeps a resumed run's history."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a run continued in its own folder (``resume=RUN``) keeps its earlier rows.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts. Here the earlier rows are written back at
    once (nothing is lost if the resumed run fails early), and when the first new row comes, the earlier rows at or
    after its step are dropped: they were logged after the checkpoint, by the part of a stopped run that the resume
    trains again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier_rows: list[dict[str, str]] | None = None

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        keys, rows = [], []
        if path.is_file():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                rows, keys = list(reader), list(reader.fieldnames or [])
        with warnings.catch_warnings():  # "previous log files ... will be deleted": they are written back below
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = super().experiment  # removes metrics.csv
        if rows:
            self._write(writer, keys, rows)
            self._earlier_rows = rows
        return writer

    @staticmethod
    def _write(writer, keys: list[str], rows: list[dict[str, str]]) -> None:
        # Sorted, as Lightning's writer keeps its keys: later rows are appended in this column order.
        writer.metrics_keys = sorted(keys)
        with open(writer.metrics_file_path, "w", newline="") as file:
            table = csv.DictWriter(file, fieldnames=writer.metrics_keys)
            table.writeheader()
            table.writerows(rows)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        writer = self.experiment
        if self._earlier_rows is not None and step is not None:
            kept = [row for row in self._earlier_rows if not row.get("step") or int(float(row["step"])) < step]
            if len(kept) < len(self._earlier_rows):
                self._write(writer, writer.metrics_keys, kept)
            self._earlier_rows = None
        super().log_metrics(metrics, step)
