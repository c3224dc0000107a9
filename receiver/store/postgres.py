"""PostgreSQL backend (asyncpg pool): the city's store, shared by any number of receiver replicas.

A batch is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING
RETURNING``: PostgreSQL itself tells which events were new, so concurrent
replicas receiving the same replay cannot both count it as accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson

from receiver.store.analytics import (
    AirRow,
    CountsQuery,
    Params,
    SpeedRow,
    TrafficRow,
    Window,
    air_rows,
    air_sql,
    counts_sql,
    hours_by_type_sql,
    speed_rows,
    speed_sql,
    traffic_rows,
    traffic_sql,
)
from receiver.store.base import (
    POLE_COLUMNS,
    POSITION_COLUMNS,
    ConfigChange,
    EventPage,
    EventQuery,
    FleetSummary,
    InsertResult,
    MaintenanceReport,
    Overlay,
    PartitionLayout,
    PoleChanges,
    PolePage,
    PolePosition,
    PoleQuery,
    PoleState,
    PoolStats,
    RetentionRules,
    Scope,
    Session,
    StatusFigures,
    StoreError,
    TokenInfo,
    TokenRecord,
    User,
    layers_by_pole,
    pole_state,
    public_event,
    refused_by_database,
    schema_problem,
    target_versions,
    token_id_of,
)
from receiver.store.partitions import MAINTENANCE_LOCK, MIGRATION_DAYS_BACK, Maintainer, release_media
from receiver.store.rollups import hour_of, rollup_rows, shard_of
from sync.overlays import overlay_version
from sync.protocol import Rejection, WireEvent

# Errors in the values of one event (class 22, "data exception": NUL in text, bigint overflow...,
# and class 54, "program limit exceeded": a value too deep or too large); all else is unavailability.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@contextlib.contextmanager
def _available() -> Iterator[None]:
    """Any database error inside becomes a :class:`StoreError`: the caller answers 503, logs no traceback."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreError(str(exc)) from exc


# Any constant: replicas starting together serialise their migrations on it.
_MIGRATION_LOCK = 0x5350_0001

_ROLLUP_TABLES = (
    "rollup_pole_hourly",
    "rollup_pole_daily",
    "rollup_pole_hourly_total",
    "rollup_pole_daily_total",
    "rollup_fleet_hourly",
    "rollup_fleet_daily",
    "rollup_traffic",
    "rollup_air",
    "rollup_speed",
)

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('pole', 'reader')),
            pole_id TEXT,
            name TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )""",
        "CREATE INDEX tokens_by_pole ON tokens (pole_id)",
        """CREATE TABLE poles (
            pole_id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION,
            last_batch_id TEXT,
            max_seq BIGINT NOT NULL DEFAULT 0,
            events_total BIGINT NOT NULL DEFAULT 0,
            status JSONB
        )""",
        """CREATE TABLE events (
            n BIGSERIAL PRIMARY KEY,
            pole_id TEXT NOT NULL,
            event_id UUID NOT NULL,
            seq BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            type TEXT NOT NULL,
            priority TEXT NOT NULL,
            lat DOUBLE PRECISION,
            lon DOUBLE PRECISION,
            location_source TEXT,
            data JSONB NOT NULL,
            media JSONB NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            batch_id TEXT NOT NULL,
            UNIQUE (pole_id, event_id)
        )""",
        "CREATE INDEX events_by_pole_ts ON events (pole_id, ts)",
        """CREATE TABLE media (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            pole_id TEXT NOT NULL,
            stored_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    2: [
        "ALTER TABLE tokens ADD COLUMN token_id TEXT",
        "UPDATE tokens SET token_id = substr(token_hash, 1, 12)",
        "ALTER TABLE tokens ALTER COLUMN token_id SET NOT NULL",
        "CREATE UNIQUE INDEX tokens_by_id ON tokens (token_id)",
        "ALTER TABLE tokens ADD COLUMN last_used_at DOUBLE PRECISION",
    ],
    4: [
        "ALTER TABLE tokens DROP CONSTRAINT tokens_role_check",
        "ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('pole', 'reader', 'admin'))",
        "ALTER TABLE poles ADD COLUMN name TEXT",
        "ALTER TABLE poles ADD COLUMN lat DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN lon DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN first_seen DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN revoked_at DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN config_target TEXT NOT NULL DEFAULT '0'",
        "ALTER TABLE poles ADD COLUMN config_applied TEXT",
        "ALTER TABLE poles ADD COLUMN config_error TEXT",
        "ALTER TABLE poles ADD COLUMN backlog BIGINT",
        "ALTER TABLE poles ADD COLUMN oldest_age_s DOUBLE PRECISION",
        "ALTER TABLE poles ADD COLUMN clock_skew_s DOUBLE PRECISION",
        "UPDATE poles SET first_seen = last_seen",  # the best known: first contact is not older than that
        # Poles whose every token was revoked before this version are revoked poles.
        "UPDATE poles SET revoked_at = (SELECT max(t.revoked_at) FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " WHERE EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id)"
        " AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.pole_id = poles.pole_id AND t.revoked_at IS NULL)",
        # The same table as analytics' migration 3 (either may come first).
        "CREATE TABLE IF NOT EXISTS pole_tags (pole_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (tag, pole_id))",
        "CREATE INDEX IF NOT EXISTS pole_tags_by_pole ON pole_tags (pole_id)",
        """CREATE TABLE config_overlays (
            scope TEXT NOT NULL CHECK (scope IN ('pole', 'tag')),
            name TEXT NOT NULL,
            overlay JSONB NOT NULL,
            version TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            updated_by TEXT,
            PRIMARY KEY (scope, name)
        )""",
    ],
    5: [
        # Ingest waits while the rollups are built from the events stored so far: an event inserted
        # meanwhile by a receiver of this version is counted by its own transaction, after this one.
        "LOCK TABLE events IN SHARE MODE",
        "SET LOCAL work_mem = '256MB'",  # the backfill's groupings fit in memory, not in temporary files
        """CREATE TABLE rollup_pole_hourly (
            pole_id TEXT NOT NULL, hour BIGINT NOT NULL, type TEXT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (pole_id, hour, type)
        )""",
        """CREATE TABLE rollup_pole_daily (
            pole_id TEXT NOT NULL, day BIGINT NOT NULL, type TEXT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (pole_id, day, type)
        )""",
        """CREATE TABLE rollup_pole_hourly_total (
            pole_id TEXT NOT NULL, hour BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (pole_id, hour)
        )""",
        """CREATE TABLE rollup_pole_daily_total (
            pole_id TEXT NOT NULL, day BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (pole_id, day)
        )""",
        """CREATE TABLE rollup_fleet_hourly (
            hour BIGINT NOT NULL, type TEXT NOT NULL, shard SMALLINT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (hour, type, shard)
        )""",
        """CREATE TABLE rollup_fleet_daily (
            day BIGINT NOT NULL, type TEXT NOT NULL, shard SMALLINT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (day, type, shard)
        )""",
        """CREATE TABLE rollup_traffic (
            pole_id TEXT NOT NULL, hour BIGINT NOT NULL, line TEXT NOT NULL, direction TEXT NOT NULL,
            class TEXT NOT NULL, n BIGINT NOT NULL,
            PRIMARY KEY (pole_id, hour, line, direction, class)
        )""",
        """CREATE TABLE rollup_air (
            pole_id TEXT NOT NULL, hour BIGINT NOT NULL,
            pm25_sum DOUBLE PRECISION NOT NULL, pm25_max DOUBLE PRECISION NOT NULL,
            pm10_sum DOUBLE PRECISION NOT NULL, pm10_max DOUBLE PRECISION NOT NULL, samples BIGINT NOT NULL,
            PRIMARY KEY (pole_id, hour)
        )""",
        """CREATE TABLE rollup_speed (
            pole_id TEXT NOT NULL, hour BIGINT NOT NULL, bucket INTEGER NOT NULL, n BIGINT NOT NULL,
            over_limit BIGINT NOT NULL, PRIMARY KEY (pole_id, hour, bucket)
        )""",
        # The events stored before this version, by the rules of receiver/store/rollups.py; written
        # in time order, as ingest writes them, so that a span of hours is a span of pages.
        "INSERT INTO rollup_pole_hourly (pole_id, hour, type, n)"
        " SELECT pole_id, floor(ts / 3600)::bigint * 3600, type, count(*) FROM events GROUP BY 1, 2, 3"
        " ORDER BY 2, 1",
        "INSERT INTO rollup_pole_daily (pole_id, day, type, n)"
        " SELECT pole_id, hour - hour % 86400, type, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2, 3 ORDER BY 2, 1",
        "INSERT INTO rollup_pole_hourly_total (pole_id, hour, n)"
        " SELECT pole_id, hour, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2 ORDER BY 2, 1",
        "INSERT INTO rollup_pole_daily_total (pole_id, day, n)"
        " SELECT pole_id, day, sum(n) FROM rollup_pole_daily GROUP BY 1, 2 ORDER BY 2, 1",
        # All in shard 0: shards only spread the row locks of concurrent batches; queries sum them.
        "INSERT INTO rollup_fleet_hourly (hour, type, shard, n)"
        " SELECT hour, type, 0, sum(n) FROM rollup_pole_hourly GROUP BY 1, 2",
        "INSERT INTO rollup_fleet_daily (day, type, shard, n)"
        " SELECT day, type, 0, sum(n) FROM rollup_pole_daily GROUP BY 1, 2",
        # CASE, not AND, wherever a cast must only see what was checked (PostgreSQL may reorder AND).
        """INSERT INTO rollup_traffic (pole_id, hour, line, direction, class, n)
        SELECT pole_id, floor(at / 3600)::bigint * 3600, line, direction, class, sum(crossings) FROM (
            SELECT e.pole_id, e.data->>'line' AS line, d.key AS direction, c.key AS class,
                CASE WHEN jsonb_typeof(e.data->'period_start') = 'number'
                    THEN CASE WHEN (e.data->>'period_start')::float8 BETWEEN 0 AND 253402300799
                        THEN (e.data->>'period_start')::float8 ELSE e.ts END
                    ELSE e.ts END AS at,
                CASE WHEN jsonb_typeof(c.value) = 'number' AND (c.value #>> '{}') ~ '^[0-9]{1,7}$'
                    THEN (c.value #>> '{}')::bigint END AS crossings
            FROM events e
            CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(e.data->'counts') = 'object'
                THEN e.data->'counts' ELSE '{}'::jsonb END) d
            CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(d.value) = 'object'
                THEN d.value ELSE '{}'::jsonb END) c
            WHERE e.type = 'count' AND jsonb_typeof(e.data->'line') = 'string'
        ) s WHERE crossings <= 1000000 GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1""",
        """INSERT INTO rollup_air (pole_id, hour, pm25_sum, pm25_max, pm10_sum, pm10_max, samples)
        SELECT pole_id, floor(ts / 3600)::bigint * 3600, sum(pm25 * w), max(pm25), sum(pm10 * w), max(pm10), sum(w)
        FROM (
            SELECT pole_id, ts,
                CASE WHEN jsonb_typeof(data->'pm2_5') = 'number' THEN (data->>'pm2_5')::float8 END AS pm25,
                CASE WHEN jsonb_typeof(data->'pm10') = 'number' THEN (data->>'pm10')::float8 END AS pm10,
                CASE WHEN jsonb_typeof(data->'samples') = 'number' AND (data->>'samples') ~ '^[0-9]{1,7}$'
                    THEN CASE WHEN (data->>'samples')::bigint BETWEEN 1 AND 1000000
                        THEN (data->>'samples')::bigint ELSE 1 END
                    ELSE 1 END AS w
            FROM events WHERE type = 'air_quality'
        ) s WHERE pm25 >= 0 AND pm25 < 1e9 AND pm10 >= 0 AND pm10 < 1e9 GROUP BY 1, 2 ORDER BY 2, 1""",
        """INSERT INTO rollup_speed (pole_id, hour, bucket, n, over_limit)
        SELECT pole_id, floor(ts / 3600)::bigint * 3600, floor(kmh * 10 + 0.5)::integer, count(*),
            count(*) FILTER (WHERE over)
        FROM (
            SELECT pole_id, ts,
                CASE WHEN jsonb_typeof(data->'speed_kmh') = 'number' THEN (data->>'speed_kmh')::float8 END AS kmh,
                data->'over_limit' = 'true'::jsonb AS over
            FROM events WHERE type = 'speed'
        ) s WHERE kmh >= 0 AND kmh < 1000 GROUP BY 1, 2, 3 ORDER BY 2, 1""",
        # For the questions about every pole (by hour, in order); one pole's go by the primary keys.
        "CREATE INDEX rollup_pole_hourly_by_hour ON rollup_pole_hourly (hour, pole_id)",
        "CREATE INDEX rollup_pole_daily_by_day ON rollup_pole_daily (day, pole_id)",
        "CREATE INDEX rollup_pole_hourly_total_by_hour ON rollup_pole_hourly_total (hour, pole_id)",
        "CREATE INDEX rollup_pole_daily_total_by_day ON rollup_pole_daily_total (day, pole_id)",
        "CREATE INDEX rollup_traffic_by_hour ON rollup_traffic (hour, pole_id)",
        "CREATE INDEX rollup_air_by_hour ON rollup_air (hour, pole_id)",
        "CREATE INDEX rollup_speed_by_hour ON rollup_speed (hour, pole_id)",
        # The planner's figures now, not when autovacuum gets round to these tables.
        *(f"ANALYZE {table}" for table in _ROLLUP_TABLES),
    ],
    6: [
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('reader', 'admin')),
            password_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE sessions (
            session_hash TEXT PRIMARY KEY,
            user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
        "CREATE INDEX sessions_by_user ON sessions (user_name)",
        """CREATE TABLE config_history (
            n BIGSERIAL PRIMARY KEY,
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            overlay JSONB,
            changed_at DOUBLE PRECISION NOT NULL,
            changed_by TEXT
        )""",
        "CREATE INDEX config_history_by_name ON config_history (scope, name, n)",
    ],
    # The events table becomes range-partitioned by ts, in place (see receiver/store/partitions.py): the
    # rows keep their n (readers' cursors go on), their keys move to event_keys, and existing events of
    # the last MIGRATION_DAYS_BACK days get daily partitions (older or future ones go to the default).
    7: [
        "ALTER TABLE events RENAME TO events_v4",
        "ALTER INDEX events_by_pole_ts RENAME TO events_v4_by_pole_ts",
        "ALTER SEQUENCE events_n_seq OWNED BY NONE",
        """CREATE TABLE events (
            n BIGINT NOT NULL DEFAULT nextval('events_n_seq'),
            pole_id TEXT NOT NULL,
            event_id UUID NOT NULL,
            seq BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            type TEXT NOT NULL,
            priority TEXT NOT NULL,
            lat DOUBLE PRECISION,
            lon DOUBLE PRECISION,
            location_source TEXT,
            data JSONB NOT NULL,
            media JSONB NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            batch_id TEXT NOT NULL
        ) PARTITION BY RANGE (ts)""",
        "ALTER SEQUENCE events_n_seq OWNED BY events.n",
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
        "CREATE TABLE event_keys (pole_id TEXT NOT NULL, event_id UUID NOT NULL, PRIMARY KEY (pole_id, event_id))",
        f"""DO $$
        DECLARE
            today DOUBLE PRECISION := floor(extract(epoch FROM now()) / 86400) * 86400;
            first DOUBLE PRECISION;
            day DOUBLE PRECISION;
        BEGIN
            SELECT floor(min(ts) / 86400) * 86400 INTO first FROM events_v4
            WHERE ts >= today - {MIGRATION_DAYS_BACK} * 86400 AND ts < today + 86400;
            IF first IS NULL THEN
                RETURN;
            END IF;
            day := first;
            WHILE day <= today LOOP
                EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%s) TO (%s)',
                               'events_p' || to_char(to_timestamp(day) AT TIME ZONE 'UTC', 'YYYYMMDD'),
                               day, day + 86400);
                day := day + 86400;
            END LOOP;
        END $$""",
        "INSERT INTO events (n, pole_id, event_id, seq, ts, type, priority, lat, lon, location_source, data, media,"
        " received_at, batch_id) SELECT n, pole_id, event_id, seq, ts, type, priority, lat, lon, location_source,"
        " data, media, received_at, batch_id FROM events_v4",
        "INSERT INTO event_keys (pole_id, event_id) SELECT pole_id, event_id FROM events_v4",
        "DROP TABLE events_v4",
        "CREATE INDEX events_by_n ON events (n)",  # the readers' cursor
        "CREATE INDEX events_by_pole_ts ON events (pole_id, ts)",
        # Retention asks whether any event still refers to a file; only events with media are indexed.
        "CREATE INDEX events_by_media ON events USING gin (media jsonb_path_ops) WHERE media <> '[]'::jsonb",
        "CREATE INDEX events_default_type_ts ON events_default (type, ts)",
    ],
}

# Any constant: changes of remote configuration and tags serialise on it, so two admins changing a
# tag's overlay and a pole's tags at once cannot leave the pole with a stale target version.
_CONFIG_LOCK = 0x5350_0004

_TOKEN_COLUMNS = "token_id, role, pole_id, name, created_at, last_used_at, revoked_at"

# A batch in one statement, which is its own transaction: its keys (only those new to event_keys
# become events, so replicas racing on one replay cannot both store it), its new events, its pole's
# row (counting only the new ones), the analytics rollups of the new ones and which of its media are
# stored. One round trip where a transaction of separate statements took nine (BEGIN, the events,
# six rollup upserts, COMMIT). The events go as one JSON document (``events_json``): one parameter
# to encode instead of ten arrays. Each event carries its hour (``h``) and what it adds to the
# traffic, air and speed rollups (``r``), both worked out by receiver/store/rollups.py, so the rules
# live in one place and SQL only sums; every upsert takes its rows in key order, so concurrent
# batches lock shared rows (the fleet rows) in one order. A data error in any event aborts the whole
# statement; the batch is then stored around the refused events (``_insert_around_refusals``) by
# the same parts: the keys and events alone (``_STORE_EVENTS``), then the rest for the events stored
# (``_COUNT_STORED``).
_EVENTS = """
WITH e AS (
    SELECT * FROM jsonb_to_recordset($4::text::jsonb)
         AS e(i uuid, s bigint, t float8, y text, p text, a float8, o float8, c text, d jsonb, m jsonb,
              h bigint, r jsonb)
)
"""
_NEW_EVENTS = """
, fresh AS (
    INSERT INTO event_keys (pole_id, event_id) SELECT $1, e.i FROM e
    ON CONFLICT DO NOTHING
    RETURNING event_id
), new AS (
    INSERT INTO events (pole_id, event_id, seq, ts, type, priority, lat, lon, location_source,
                        data, media, received_at, batch_id)
    SELECT $1, e.i, e.s, e.t, e.y, e.p, e.a, e.o, e.c, e.d, e.m, $2, $3
    FROM fresh f JOIN e ON e.i = f.event_id
    RETURNING event_id
)
"""
# Events stored by _STORE_EVENTS already: they are what the rest counts.
_STORED_EVENTS = """
, new AS (SELECT e.i AS event_id FROM e)
"""
_COUNTED = """
, n AS (
    SELECT e.h, e.y, e.r FROM new JOIN e ON e.i = new.event_id
), pole AS (
    UPDATE poles SET last_seen = $2, first_seen = coalesce(first_seen, $2), last_batch_id = $3,
        max_seq = greatest(max_seq, $5), events_total = events_total + (SELECT count(*) FROM new){status}
    WHERE pole_id = $1 RETURNING config_target
), hourly AS (
    SELECT h, y, count(*) AS c FROM n GROUP BY h, y
), pole_hourly AS (
    INSERT INTO rollup_pole_hourly (pole_id, hour, type, n)
    SELECT $1, h, y, c FROM hourly ORDER BY h, y
    ON CONFLICT (pole_id, hour, type) DO UPDATE SET n = rollup_pole_hourly.n + excluded.n
), pole_daily AS (
    INSERT INTO rollup_pole_daily (pole_id, day, type, n)
    SELECT $1, h - h % 86400, y, sum(c)::bigint FROM hourly GROUP BY 2, 3 ORDER BY 2, 3
    ON CONFLICT (pole_id, day, type) DO UPDATE SET n = rollup_pole_daily.n + excluded.n
), pole_hourly_total AS (
    INSERT INTO rollup_pole_hourly_total (pole_id, hour, n)
    SELECT $1, h, sum(c)::bigint FROM hourly GROUP BY h ORDER BY h
    ON CONFLICT (pole_id, hour) DO UPDATE SET n = rollup_pole_hourly_total.n + excluded.n
), pole_daily_total AS (
    INSERT INTO rollup_pole_daily_total (pole_id, day, n)
    SELECT $1, h - h % 86400, sum(c)::bigint FROM hourly GROUP BY 2 ORDER BY 2
    ON CONFLICT (pole_id, day) DO UPDATE SET n = rollup_pole_daily_total.n + excluded.n
), traffic AS (
    INSERT INTO rollup_traffic (pole_id, hour, line, direction, class, n)
    SELECT $1, x.hour, x.line, x.direction, x.class, sum(x.n)
    FROM n CROSS JOIN LATERAL jsonb_to_recordset(n.r->'traffic')
         AS x(hour bigint, line text, direction text, class text, n bigint)
    WHERE n.r IS NOT NULL GROUP BY 2, 3, 4, 5 ORDER BY 2, 3, 4, 5
    ON CONFLICT (pole_id, hour, line, direction, class) DO UPDATE SET n = rollup_traffic.n + excluded.n
), air AS (
    INSERT INTO rollup_air (pole_id, hour, pm25_sum, pm25_max, pm10_sum, pm10_max, samples)
    SELECT $1, x.hour, sum(x.pm25_sum), max(x.pm25_max), sum(x.pm10_sum), max(x.pm10_max), sum(x.samples)
    FROM n CROSS JOIN LATERAL jsonb_to_recordset(n.r->'air')
         AS x(hour bigint, pm25_sum float8, pm25_max float8, pm10_sum float8, pm10_max float8, samples bigint)
    WHERE n.r IS NOT NULL GROUP BY 2 ORDER BY 2
    ON CONFLICT (pole_id, hour) DO UPDATE SET pm25_sum = rollup_air.pm25_sum + excluded.pm25_sum,
        pm25_max = greatest(rollup_air.pm25_max, excluded.pm25_max),
        pm10_sum = rollup_air.pm10_sum + excluded.pm10_sum,
        pm10_max = greatest(rollup_air.pm10_max, excluded.pm10_max), samples = rollup_air.samples + excluded.samples
), speed AS (
    INSERT INTO rollup_speed (pole_id, hour, bucket, n, over_limit)
    SELECT $1, x.hour, x.bucket, sum(x.n), sum(x.over_limit)
    FROM n CROSS JOIN LATERAL jsonb_to_recordset(n.r->'speed')
         AS x(hour bigint, bucket integer, n bigint, over_limit bigint)
    WHERE n.r IS NOT NULL GROUP BY 2, 3 ORDER BY 2, 3
    ON CONFLICT (pole_id, hour, bucket) DO UPDATE SET n = rollup_speed.n + excluded.n,
        over_limit = rollup_speed.over_limit + excluded.over_limit
), fleet_hourly AS (
    INSERT INTO rollup_fleet_hourly (hour, type, shard, n)
    SELECT h, y, $7::smallint, c FROM hourly ORDER BY h, y
    ON CONFLICT (hour, type, shard) DO UPDATE SET n = rollup_fleet_hourly.n + excluded.n
), fleet_daily AS (
    INSERT INTO rollup_fleet_daily (day, type, shard, n)
    SELECT h - h % 86400, y, $7::smallint, sum(c)::bigint FROM hourly GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, type, shard) DO UPDATE SET n = rollup_fleet_daily.n + excluded.n
)
SELECT array(SELECT event_id::text FROM new), (SELECT config_target FROM pole),
       array(SELECT sha256 FROM media WHERE sha256 = any($6::text[]) ORDER BY sha256 FOR SHARE)
"""
_STATUS_SET = (
    ", status = $8::jsonb, config_applied = $9, config_error = $10, backlog = $11, oldest_age_s = $12,"
    " clock_skew_s = $13"
)


def _counted(new: str) -> dict[bool, str]:
    """The batch statement, counting the events ``new`` selects, without and with a status block."""
    return {
        with_status: _EVENTS + new + _COUNTED.replace("{status}", _STATUS_SET if with_status else "")
        for with_status in (False, True)
    }


_INSERT_AT_ONCE = _counted(_NEW_EVENTS)
_COUNT_STORED = _counted(_STORED_EVENTS)
_STORE_EVENTS = _EVENTS + _NEW_EVENTS + "SELECT array(SELECT event_id::text FROM new)\n"


def _walk_large_floats(value: Any) -> Any:
    if isinstance(value, float) and abs(value) >= 1e16:
        return orjson.Fragment(format(value, ".1f"))
    if isinstance(value, dict):
        return {k: _walk_large_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_large_floats(v) for v in value]
    return value


def events_json(events: list[WireEvent]) -> str:
    """The events as the JSON array ``_INSERT_AT_ONCE`` reads (with each one's hour and traffic, air and speed
    rollup rows), large floats written as :func:`jsonb_text` does."""
    rows = []
    for e in events:
        lat, lon, src = (e.location.lat, e.location.lon, e.location.source) if e.location else (None, None, None)
        rows.append(
            {"i": e.id, "s": e.seq, "t": e.ts, "y": e.type, "p": e.priority, "a": lat, "o": lon, "c": src}
            | {"d": e.data, "m": e.media, "h": hour_of(e.ts), "r": rollup_rows(e)}
        )
    text = orjson.dumps(rows)
    if b"e+" in text:
        text = orjson.dumps(_walk_large_floats(rows))
    return text.decode()


def jsonb_text(data: Any) -> str:
    """``data`` as JSON text that jsonb keeps as the same value. orjson writes a float from 1e16 up
    in exponent form (``6.006290159228115e+16``); jsonb stores numbers as decimals and would give
    it back as the integer 60062901592281150, neither a float nor the float's value. Written out
    with a decimal point (``60062901592281152.0``), it comes back as that very float."""
    text = orjson.dumps(data)
    if b"e+" in text:  # rare: only then walk the values
        text = orjson.dumps(_walk_large_floats(data))
    return text.decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, schema="pg_catalog", encoder=jsonb_text, decoder=orjson.loads)


async def _migrate(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        for version in sorted(v for v in MIGRATIONS if v > current):
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)


async def _session_kept(conn: asyncpg.Connection) -> None:
    """On release to the pool, asyncpg still ends any open transaction; this replaces only its reset
    query (UNLISTEN, RESET ALL, unlock all, CLOSE ALL), a round trip per request for session state
    this store never sets: it LISTENs to nothing, SETs nothing and takes only transaction-scoped
    advisory locks."""


class PostgresStore:
    backend = "postgresql"
    _pool: asyncpg.Pool

    def __init__(self) -> None:
        self._migrated = False
        self._migrating = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, pool_size: int = 8, wait: bool = True) -> PostgresStore:
        """The pool connects lazily and brings the schema current on its first connection, so a receiver
        can start (alive, not ready) while the database is away; ``wait`` connects (and migrates) now,
        raising :class:`StoreError` if it cannot."""
        store = cls()
        try:
            store._pool = await asyncpg.create_pool(
                url, min_size=0, max_size=pool_size, init=store._init_connection, reset=_session_kept
            )
            if wait:
                await store._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        return store

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if not self._migrated:
            async with self._migrating:
                if not self._migrated:
                    await _migrate(conn)
                    self._migrated = True

    async def schema_behind(self) -> str | None:
        with _available():
            current = await self._pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        return schema_problem(int(current), max(MIGRATIONS))

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        try:
            await self._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(str(exc)) from exc

    async def lookup_token(self, token_hash: str) -> TokenInfo | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT role, pole_id, name, revoked_at, token_id FROM tokens WHERE token_hash = $1", token_hash
            )
            return None if row is None else TokenInfo(row[0], row[1], row[2], row[3] is not None, row[4])

    async def pole_keys(self, pole_id: str) -> list[str]:
        try:
            rows = await self._pool.fetch(
                "SELECT token_hash FROM tokens WHERE pole_id = $1 AND role = 'pole' AND revoked_at IS NULL", pole_id
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(str(exc)) from exc
        return [str(r[0]) for r in rows]

    async def add_token(self, token_hash: str, role: str, pole_id: str | None, name: str | None) -> None:
        with _available():
            now = time.time()
            async with self._pool.acquire() as conn, conn.transaction():
                if pole_id is not None:
                    await conn.execute(
                        "INSERT INTO poles (pole_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING", pole_id, now
                    )
                    await conn.execute("UPDATE poles SET revoked_at = NULL WHERE pole_id = $1", pole_id)
                await conn.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6)",
                    token_hash,
                    token_id_of(token_hash),
                    role,
                    pole_id,
                    name,
                    now,
                )

    async def revoke_pole(self, pole_id: str) -> int:
        with _available():
            now = time.time()
            async with self._pool.acquire() as conn, conn.transaction():
                result = await conn.execute(
                    "UPDATE tokens SET revoked_at = $1 WHERE pole_id = $2 AND revoked_at IS NULL", now, pole_id
                )
                await conn.execute(
                    "UPDATE poles SET revoked_at = coalesce(revoked_at, $1) WHERE pole_id = $2", now, pole_id
                )
            return int(result.split()[-1])

    async def list_tokens(self) -> list[TokenRecord]:
        with _available():
            rows = await self._pool.fetch(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id")
            return [TokenRecord(*r) for r in rows]

    async def tokens_with_prefix(self, prefix: str) -> list[TokenRecord]:
        with _available():
            rows = await self._pool.fetch(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE starts_with(token_id, $1) ORDER BY token_id", prefix
            )
            return [TokenRecord(*r) for r in rows]

    async def revoke_token(self, token_id: str) -> bool:
        with _available():
            result = await self._pool.execute(
                "UPDATE tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL", time.time(), token_id
            )
            return result.endswith(" 1")

    async def touch_token(self, token_id: str, when: float) -> None:
        with _available():
            await self._pool.execute(
                "UPDATE tokens SET last_used_at = greatest(coalesce(last_used_at, 0), $2) WHERE token_id = $1",
                token_id,
                when,
            )

    async def insert_batch(
        self, pole_id: str, batch_id: str, events: list[WireEvent], status: dict[str, Any] | None, now: float
    ) -> InsertResult:
        shas = sorted({sha for e in events for sha in e.media})
        try:
            async with self._pool.acquire() as conn:
                try:
                    # The common case: the batch and its rollups in one statement.
                    max_seq = max((e.seq for e in events), default=0)
                    inserted, target, have = await self._insert_at_once(
                        conn, pole_id, batch_id, now, events, shas, status, max_seq
                    )
                    rejected: list[Rejection] = []
                except _DATA_ERRORS:  # nothing was written: find the event(s) the database refuses
                    inserted, target, have, rejected = await self._insert_around_refusals(
                        conn, pole_id, batch_id, now, events, status
                    )
        except _UNAVAILABLE as exc:
            raise StoreError(str(exc)) from exc
        refused = {r.id for r in rejected}
        kept = [e for e in events if e.id not in refused]
        kept_shas = sorted({sha for e in kept for sha in e.media})
        return InsertResult(
            accepted=[e.id for e in kept if e.id in inserted],
            duplicates=[e.id for e in kept if e.id not in inserted],
            missing_media=[s for s in kept_shas if s not in have],
            rejected=rejected,
            config_target=target,
        )

    @staticmethod
    async def _insert_at_once(
        conn: asyncpg.Connection,
        pole_id: str,
        batch_id: str,
        now: float,
        events: list[WireEvent],
        shas: list[str],
        status: dict[str, Any] | None,
        max_seq: int,
        statements: dict[bool, str] = _INSERT_AT_ONCE,
    ) -> tuple[set[str], str | None, set[str]]:
        """The events, the pole's row, the rollups and the media check in one statement: (new ids, the
        pole's target version, which of ``shas`` are stored). With ``_COUNT_STORED``, ``events`` are
        stored already and counted."""
        params: list[Any] = [pole_id, now, batch_id, events_json(events), max_seq, shas, shard_of(pole_id)]
        sql = statements[status is not None]
        if status is not None:
            figures = StatusFigures.of(status)
            params += [
                status,
                figures.config_applied,
                figures.config_error,
                figures.backlog,
                figures.oldest_age_s,
                figures.clock_skew_s,
            ]
        row = await conn.fetchrow(sql, *params)
        assert row is not None
        return set(row[0]), row[1], set(row[2])

    async def _insert_around_refusals(
        self,
        conn: asyncpg.Connection,
        pole_id: str,
        batch_id: str,
        now: float,
        events: list[WireEvent],
        status: dict[str, Any] | None,
    ) -> tuple[set[str], str | None, set[str], list[Rejection]]:
        """A batch the database refused a value of, in one transaction: its keys and events stored by halves,
        each in a savepoint and halved again when refused, down to the refused events, which are rejected;
        then the pole's row, the rollups of the events stored and the media check of those kept."""
        rejected: list[Rejection] = []
        half = len(events) // 2  # the whole batch was just refused: its halves first
        async with conn.transaction():
            inserted = await self._store_halving(conn, pole_id, batch_id, now, events[:half], rejected)
            inserted |= await self._store_halving(conn, pole_id, batch_id, now, events[half:], rejected)
            refused = {r.id for r in rejected}
            kept = [e for e in events if e.id not in refused]
            stored = [e for e in kept if e.id in inserted]
            shas = sorted({sha for e in kept for sha in e.media})
            max_seq = max((e.seq for e in kept), default=0)
            _, target, have = await self._insert_at_once(
                conn, pole_id, batch_id, now, stored, shas, status, max_seq, _COUNT_STORED
            )
        return inserted, target, have, rejected

    @staticmethod
    async def _store_halving(
        conn: asyncpg.Connection,
        pole_id: str,
        batch_id: str,
        now: float,
        events: list[WireEvent],
        rejected: list[Rejection],
    ) -> set[str]:
        """The keys and events of ``events``, halving where the database refuses a value (a dozen statements
        find one bad event in a thousand): the ids that were new."""
        if not events:
            return set()
        try:
            async with conn.transaction():
                return set(await conn.fetchval(_STORE_EVENTS, pole_id, now, batch_id, events_json(events)))
        except _DATA_ERRORS as exc:
            if len(events) == 1:
                rejected.append(Rejection(id=events[0].id, reason=refused_by_database(exc)))
                return set()
        half = len(events) // 2
        inserted = await PostgresStore._store_halving(conn, pole_id, batch_id, now, events[:half], rejected)
        return inserted | await PostgresStore._store_halving(conn, pole_id, batch_id, now, events[half:], rejected)

    async def add_media(self, sha256: str, size: int, pole_id: str, now: float) -> bool:
        with _available():
            result = await self._pool.execute(
                "INSERT INTO media (sha256, size, pole_id, stored_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                sha256,
                size,
                pole_id,
                now,
            )
            return result.endswith(" 1")

    async def has_media(self, sha256: str) -> bool:
        with _available():
            return await self._pool.fetchval("SELECT 1 FROM media WHERE sha256 = $1", sha256) is not None

    async def query_events(self, query: EventQuery) -> EventPage:
        with _available():
            conditions = query.conditions()
            where = [sql.format(f"${i}") for i, (sql, _) in enumerate(conditions, 1)]
            params: list[Any] = [value for _, value in conditions]
            params.append(query.limit + 1)
            # Planning this over every partition costs more than running it (3 ms of 4 with 70 partitions,
            # 33 of 45 with 400): a plan made once per connection serves every page (ts bounds still prune
            # partitions, at executor start). But one pole's page is planned each time: knowing the pole, the
            # planner reads its rows by index (4 ms, against 17 for the generic plan's walk through n).
            mode = "force_generic_plan" if query.pole_id is None else "force_custom_plan"
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                rows = await conn.fetch(
                    "SELECT n, pole_id, event_id::text, seq, ts, type, priority, lat, lon, location_source, data,"
                    f" media, received_at FROM events WHERE {' AND '.join(where)} ORDER BY n LIMIT ${len(params)}",
                    *params,
                )
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            return EventPage([public_event(*r[1:]) for r in rows], rows[-1][0] if more else None)

    async def recent_events(self, pole_id: str, limit: int) -> list[dict[str, Any]]:
        with _available():
            rows = await self._pool.fetch(
                "SELECT pole_id, event_id::text, seq, ts, type, priority, lat, lon, location_source, data, media,"
                " received_at FROM events WHERE pole_id = $1 ORDER BY ts DESC LIMIT $2",
                pole_id,
                limit,
            )
            return [public_event(*r) for r in rows]

    async def poles(self) -> list[PoleState]:
        out: list[PoleState] = []
        after = None
        while True:
            page = await self.list_poles(PoleQuery(after=after, limit=1000))
            out += page.poles
            if page.next_cursor is None:
                return out
            after = page.next_cursor

    async def count_online(self, since: float) -> int:
        with _available():
            return int(await self._pool.fetchval("SELECT count(*) FROM poles WHERE last_seen >= $1", since))

    # ------------------------------------------------------------------ fleet registry

    @staticmethod
    async def _poles_where(conn: Any, where: str, *params: Any) -> list[PoleState]:
        rows = await conn.fetch(f"SELECT {POLE_COLUMNS} FROM poles WHERE {where}", *params)
        if not rows:
            return []
        tags: dict[str, list[str]] = {}
        for pole, tag in await conn.fetch(
            "SELECT pole_id, tag FROM pole_tags WHERE pole_id = any($1::text[]) ORDER BY tag", [r[0] for r in rows]
        ):
            tags.setdefault(pole, []).append(tag)
        return [pole_state(r, r[4], tags.get(r[0], [])) for r in rows]

    async def register_pole(
        self,
        pole_id: str,
        token_hash: str,
        now: float,
        name: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        tags: list[str] | None = None,
    ) -> bool:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                result = await conn.execute(
                    "INSERT INTO poles (pole_id, created_at, name, lat, lon) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT DO NOTHING",
                    pole_id,
                    now,
                    name,
                    lat,
                    lon,
                )
                if not result.endswith(" 1"):
                    return False
                await conn.execute(
                    "INSERT INTO tokens (token_hash, token_id, role, pole_id, name, created_at)"
                    " VALUES ($1, $2, 'pole', $3, NULL, $4)",
                    token_hash,
                    token_id_of(token_hash),
                    pole_id,
                    now,
                )
                if tags:
                    await self._set_tags(conn, pole_id, tags)
                return True

    async def get_pole(self, pole_id: str) -> PoleState | None:
        with _available():
            found = await self._poles_where(self._pool, "pole_id = $1", pole_id)
            return found[0] if found else None

    async def list_poles(self, query: PoleQuery) -> PolePage:
        with _available():
            where, params = [], []
            for sql, value in query.conditions():
                if "{}" in sql:
                    params.append(value)
                    sql = sql.format(f"${len(params)}")
                where.append(sql)
            params.append(query.limit + 1)
            clause = " AND ".join(where) or "true"
            poles = await self._poles_where(self._pool, f"{clause} ORDER BY pole_id LIMIT ${len(params)}", *params)
            more = len(poles) > query.limit
            poles = poles[: query.limit]
            return PolePage(poles, poles[-1].pole_id if more else None)

    async def pole_positions(self, query: PoleQuery) -> list[PolePosition]:
        with _available():
            where, params = [], []
            for sql, value in query.conditions():
                if "{}" in sql:
                    params.append(value)
                    sql = sql.format(f"${len(params)}")
                where.append(sql)
            params.append(query.limit)
            clause = " AND ".join(where) or "true"
            rows = await self._pool.fetch(
                f"SELECT {POSITION_COLUMNS} FROM poles WHERE {clause} ORDER BY pole_id LIMIT ${len(params)}", *params
            )
            return [PolePosition(*r) for r in rows]

    async def update_pole(self, pole_id: str, changes: PoleChanges) -> PoleState | None:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                if changes.tags is not None:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                if await conn.fetchval("SELECT 1 FROM poles WHERE pole_id = $1 FOR UPDATE", pole_id) is None:
                    return None
                fields = {k: v for k, v in changes.fields.items() if k in ("name", "lat", "lon")}
                if fields:
                    assignments = ", ".join(f"{k} = ${n}" for n, k in enumerate(fields, 2))
                    await conn.execute(f"UPDATE poles SET {assignments} WHERE pole_id = $1", pole_id, *fields.values())
                if changes.tags is not None:
                    await self._set_tags(conn, pole_id, changes.tags)
            return await self.get_pole(pole_id)

    async def set_pole_tags(self, pole_id: str, tags: list[str]) -> None:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                await self._set_tags(conn, pole_id, tags)

    async def _set_tags(self, conn: asyncpg.Connection, pole_id: str, tags: list[str]) -> None:
        await conn.execute("DELETE FROM pole_tags WHERE pole_id = $1", pole_id)
        if tags:
            await conn.executemany(
                "INSERT INTO pole_tags (pole_id, tag) VALUES ($1, $2)", [(pole_id, t) for t in sorted(set(tags))]
            )
        await self._retarget(conn, [pole_id])

    @staticmethod
    async def _layers_of(conn: Any, pole_ids: list[str]) -> dict[str, list[Overlay]]:
        """The layers of each pole's effective overlay, in merge order: two queries for any number of poles."""
        tags = await conn.fetch("SELECT pole_id, tag FROM pole_tags WHERE pole_id = any($1::text[])", pole_ids)
        rows = await conn.fetch(
            "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
            " WHERE (scope = 'pole' AND name = any($1::text[]))"
            " OR (scope = 'tag' AND name IN (SELECT tag FROM pole_tags WHERE pole_id = any($1::text[])))",
            pole_ids,
        )
        return layers_by_pole(pole_ids, [(r[0], r[1]) for r in tags], [Overlay(*r) for r in rows])

    async def _retarget(self, conn: asyncpg.Connection, pole_ids: list[str]) -> dict[str, str]:
        """Recompute the target version of ``pole_ids`` from their layers, in the caller's transaction."""
        targets = target_versions(await self._layers_of(conn, pole_ids))
        if targets:
            await conn.executemany("UPDATE poles SET config_target = $2 WHERE pole_id = $1", list(targets.items()))
        return targets

    async def set_overlay(
        self, scope: Scope, name: str, overlay: dict[str, Any] | None, now: float, by: str | None
    ) -> dict[str, str]:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CONFIG_LOCK)
                if overlay is None:
                    await conn.execute("DELETE FROM config_overlays WHERE scope = $1 AND name = $2", scope, name)
                else:
                    await conn.execute(
                        "INSERT INTO config_overlays (scope, name, overlay, version, updated_at, updated_by)"
                        " VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (scope, name) DO UPDATE SET"
                        " overlay = excluded.overlay, version = excluded.version, updated_at = excluded.updated_at,"
                        " updated_by = excluded.updated_by",
                        scope,
                        name,
                        overlay,
                        overlay_version(overlay),
                        now,
                        by,
                    )
                await conn.execute(
                    "INSERT INTO config_history (scope, name, version, overlay, changed_at, changed_by)"
                    " VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
                    scope,
                    name,
                    overlay_version(overlay or {}),
                    overlay,
                    now,
                    by,
                )
                if scope == "pole":
                    reached = [name]
                else:
                    reached = [r[0] for r in await conn.fetch("SELECT pole_id FROM pole_tags WHERE tag = $1", name)]
                return await self._retarget(conn, reached)

    async def get_overlay(self, scope: Scope, name: str) -> Overlay | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT scope, name, overlay, version, updated_at, updated_by FROM config_overlays"
                " WHERE scope = $1 AND name = $2",
                scope,
                name,
            )
            return None if row is None else Overlay(*row)

    async def pole_overlays(self, pole_id: str) -> list[Overlay]:
        with _available():
            return (await self._layers_of(self._pool, [pole_id]))[pole_id]

    async def config_history(self, scope: Scope, name: str, limit: int) -> list[ConfigChange]:
        with _available():
            rows = await self._pool.fetch(
                "SELECT scope, name, version, overlay, changed_at, changed_by FROM config_history"
                " WHERE scope = $1 AND name = $2 ORDER BY n DESC LIMIT $3",
                scope,
                name,
                limit,
            )
            return [ConfigChange(*r) for r in rows]

    async def fleet_summary(self, online_since: float) -> FleetSummary:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT"
                " count(*) FILTER (WHERE revoked_at IS NULL AND last_seen >= $1),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND coalesce(last_seen < $1, true)),"
                " count(*) FILTER (WHERE revoked_at IS NOT NULL),"
                " coalesce(max(backlog) FILTER (WHERE revoked_at IS NULL), 0),"
                " coalesce(max(oldest_age_s) FILTER (WHERE revoked_at IS NULL), 0),"
                " coalesce(max(abs(clock_skew_s)) FILTER (WHERE revoked_at IS NULL), 0),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND config_applied IS DISTINCT FROM config_target"
                "  AND config_applied IS NOT NULL),"
                " count(*) FILTER (WHERE revoked_at IS NULL AND config_error IS NOT NULL)"
                " FROM poles",
                online_since,
            )
            assert row is not None
            return FleetSummary(
                int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]), float(row[5]), row[6], row[7]
            )

    # ------------------------------------------------------------------ dashboard users and sessions

    async def put_user(self, name: str, role: str, password_hash: str, now: float) -> bool:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                created = await conn.fetchval(
                    "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (name) DO NOTHING RETURNING true",
                    name,
                    role,
                    password_hash,
                    now,
                )
                if created:
                    return True
                await conn.execute(
                    "UPDATE users SET role = $2, password_hash = $3 WHERE name = $1", name, role, password_hash
                )
                await conn.execute("DELETE FROM sessions WHERE user_name = $1", name)
                return False

    async def get_user(self, name: str) -> User | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT name, role, password_hash, created_at FROM users WHERE name = $1", name
            )
            return None if row is None else User(*row)

    async def add_session(self, session_hash: str, user: str, now: float, expires_at: float) -> None:
        with _available():
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
                await conn.execute(
                    "INSERT INTO sessions (session_hash, user_name, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                    session_hash,
                    user,
                    now,
                    expires_at,
                )

    async def lookup_session(self, session_hash: str, now: float) -> Session | None:
        with _available():
            row = await self._pool.fetchrow(
                "SELECT u.name, u.role, s.expires_at FROM sessions s JOIN users u ON u.name = s.user_name"
                " WHERE s.session_hash = $1 AND s.expires_at > $2",
                session_hash,
                now,
            )
            return None if row is None else Session(*row)

    async def delete_session(self, session_hash: str) -> None:
        with _available():
            await self._pool.execute("DELETE FROM sessions WHERE session_hash = $1", session_hash)

    # ------------------------------------------------------------------ analytics

    async def _analytics(self, build: Callable[[Params], str]) -> list[Any]:
        params = Params(lambda i: f"${i}")
        sql = build(params)
        with _available():
            return list(await self._pool.fetch(sql, *params.values))

    async def analytics_counts(self, query: CountsQuery) -> list[tuple[Any, int]]:
        return [(r[0], int(r[1])) for r in await self._analytics(lambda p: counts_sql(query, p))]

    async def analytics_hours_by_type(self, window: Window) -> list[tuple[int, str, int]]:
        return [(int(r[0]), r[1], int(r[2])) for r in await self._analytics(lambda p: hours_by_type_sql(window, p))]

    async def analytics_traffic(self, window: Window, limit: int) -> list[TrafficRow]:
        return traffic_rows(await self._analytics(lambda p: traffic_sql(window, limit, p)))

    async def analytics_air(self, window: Window, limit: int) -> list[AirRow]:
        return air_rows(await self._analytics(lambda p: air_sql(window, limit, p)))

    async def analytics_speed(self, window: Window, limit: int) -> list[SpeedRow]:
        return speed_rows(await self._analytics(lambda p: speed_sql(window, limit, p)))

    def pool_stats(self) -> PoolStats:
        pool = self._pool
        size = pool.get_size()
        return PoolStats(size=size, max_size=pool.get_max_size(), in_use=size - pool.get_idle_size())

    async def maintain(
        self, rules: RetentionRules, layout: PartitionLayout, now: float, retention: bool = True
    ) -> MaintenanceReport:
        report = MaintenanceReport()
        with _available():
            async with self._pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
                    report.skipped = "another process is maintaining the database"
                    return report
                try:
                    maintainer = Maintainer(conn, layout, report)
                    await maintainer.create_ahead(now)
                    if retention:
                        await maintainer.apply(rules, now)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
        return report

    async def release_media(self, sha256s: list[str], delete: Callable[[str], Awaitable[None]]) -> list[str]:
        with _available():
            async with self._pool.acquire() as conn:
                return await release_media(conn, sha256s, delete)
