"""A Feast offline store whose point-in-time join is one DuckDB ``ASOF`` join.

Feast's DuckDB store (through ibis) joins every entity row to *every* feature row of
its key inside the TTL, ranks them with a window function over all source columns
and joins the winners back on a string row id. On a 2M-row propensity set that took
~12 s and most of the run's memory. The same answer -- per entity row, the latest
feature row at or before its timestamp, nulls when that row is older than the view's
TTL -- is what ``ASOF LEFT JOIN`` computes in a sort-merge pass; here it runs on
keys and clocks only, and the feature columns are gathered by row number after.

Everything else (materialisation, pulls, writes, saved datasets, SQL entity frames,
sources that are not local Parquet files) is inherited from
:class:`~feast.infra.offline_stores.duckdb.DuckDBOfflineStore`.
``tests/integration/test_training_pipeline.py`` holds both stores to the same
training sets, entity rows between snapshots, before a user's first snapshot, past
the views' TTLs and repeated included.

Select it with the offline store type
``core.store.asof_offline_store.AsofDuckDBOfflineStore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
)
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from core.store.feast_config import STORE_TYPE

_ROW = "__segscore_row"  # entity row ordinal: output keeps the entity frame's order


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Same settings as Feast's DuckDB store; only the type differs."""

    type: Literal["core.store.asof_offline_store.AsofDuckDBOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


@dataclass(frozen=True)
class _ViewJoin:
    """What one feature view contributes: its file, keys, clock, TTL and columns."""

    path: str
    keys: dict[str, str]  # feature-file column -> entity column
    timestamp: str
    ttl: timedelta | None
    columns: dict[str, str]  # file column -> output column


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_path(view: FeatureView, repo_path: Path | None) -> str | None:
    """The local Parquet file a view reads, or None if it reads anything else."""
    source = view.batch_source
    if not isinstance(source, FileSource) or source.created_timestamp_column:
        return None
    if not (
        isinstance(source.file_format, ParquetFormat)
        or (source.file_format is None and source.path.endswith(".parquet"))
    ):
        return None
    if "://" in source.path:
        return None
    path = Path(source.path)
    if not path.is_absolute() and repo_path is not None:
        path = repo_path / path
    return str(path)


def _view_join(
    view: FeatureView,
    feature_refs: list[str],
    full_feature_names: bool,
    repo_path: Path | None,
) -> _ViewJoin | None:
    path = _parquet_path(view, repo_path)
    if path is None:
        return None
    source = view.batch_source
    reverse = {new: old for old, new in source.field_mapping.items()}
    prefix = view.projection.name_to_use()
    wanted = [
        ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")
    ]
    label = view.projection.name_alias or view.name
    keys = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
    return _ViewJoin(
        path=path,
        keys={reverse.get(k, k): v for k, v in keys.items()},
        timestamp=reverse.get(source.timestamp_field, source.timestamp_field),
        ttl=view.ttl or None,
        columns={
            reverse.get(name, name): f"{label}__{name}" if full_feature_names else name
            for name in wanted
        },
    )


def match_sql(entity: str, timestamp: str, view: _ViewJoin) -> str:
    """Per entity row (in ``_ROW`` order), the file row it reads, or NULL.

    Only keys, clocks and row numbers go through the join: DuckDB's ASOF join
    sorts both sides whole, and carrying every feature column through it took
    ~2 GB on the 2M-row benchmark set. The columns are gathered afterwards.
    """
    keys = ", ".join(_quote(k) for k in view.keys)
    on = [
        *(f"e.{_quote(ecol)} = f.{_quote(fcol)}" for fcol, ecol in view.keys.items()),
        f"e.{_quote(timestamp)} >= f.__ts",
    ]
    match = "f.file_row_number"
    if view.ttl:
        # Feast keeps a row only while event time + TTL has not passed.
        micros = int(view.ttl.total_seconds() * 1_000_000)
        match = (
            f"CASE WHEN f.__ts >= e.{_quote(timestamp)} - "
            f"INTERVAL {micros} MICROSECONDS THEN {match} END"
        )
    return (
        f"SELECT {match} AS row FROM {entity} AS e ASOF LEFT JOIN ("
        f"SELECT {keys}, CAST({_quote(view.timestamp)} AS TIMESTAMPTZ) AS __ts, "
        f"file_row_number FROM read_parquet({_literal(view.path)}, "
        f"file_row_number = true)) AS f ON {' AND '.join(on)} "
        f"ORDER BY e.{_quote(_ROW)}"
    )


class AsofRetrievalJob(RetrievalJob):
    """Runs the ASOF query when its result is asked for."""

    def __init__(
        self,
        entity_df: pd.DataFrame,
        timestamp: str,
        views: list[_ViewJoin],
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
    ) -> None:
        self._entity_df = entity_df
        self._timestamp = timestamp
        self._views = views
        self._on_demand_feature_views = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata:
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        table = pa.Table.from_pandas(self._entity_df, preserve_index=False)
        rows = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("entity_rows", rows)
            for view in self._views:
                match = con.sql(match_sql("entity_rows", self._timestamp, view))
                picks = match.to_arrow_table().column("row")
                # file_row_number counts rows in file order, as pyarrow reads them.
                features = pq.read_table(view.path, columns=list(view.columns))
                gathered = features.take(picks)
                for column, out in view.columns.items():
                    table = table.append_column(out, gathered.column(column))
                del features, gathered
        finally:
            con.close()
        return table

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "persist: use Feast's DuckDB store for saved datasets"
        )


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """DuckDB offline store with an ``ASOF`` point-in-time join (see module doc)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        """Point-in-time features for ``entity_df``; Feast's semantics, ASOF speed."""
        repo_path = Path(config.repo_path) if config.repo_path else None
        views = [
            _view_join(view, feature_refs, full_feature_names, repo_path)
            for view in feature_views
        ]
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        if (
            isinstance(entity_df, str)
            or any(v is None for v in views)
            or any(odfv.mode == "substrait" for odfv in odfvs)
        ):
            return DuckDBOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp,
            )
        timestamp = offline_utils.infer_event_timestamp_from_entity_df(
            dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        )
        frame = entity_df.copy(deep=False)
        stamps = frame[timestamp].infer_objects()
        if not pd.api.types.is_datetime64_any_dtype(stamps):
            stamps = pd.to_datetime(stamps, utc=True)
        elif stamps.dt.tz is None:
            stamps = stamps.dt.tz_localize("UTC")
        # DuckDB compares TIMESTAMPTZ at microseconds, as Feast's sources hold.
        frame[timestamp] = stamps.dt.as_unit("us")
        return AsofRetrievalJob(
            frame,
            timestamp,
            [v for v in views if v is not None],
            odfvs,
            full_feature_names,
            RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in frame.columns if c != timestamp],
                min_event_timestamp=stamps.min().to_pydatetime(),
                max_event_timestamp=stamps.max().to_pydatetime(),
            ),
        )
