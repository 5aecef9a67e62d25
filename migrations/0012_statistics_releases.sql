-- Published releases of the monthly statistics (POST /v1/statistics/releases): each release freezes
-- every cell of every breakdown of the closed months it names, with what is needed to render its bodies
-- byte for byte later (suppression k, completeness rule, each metric's unit and kind), its reference
-- metadata, and the revisions against the previous release of each month. Released rows are never
-- updated or deleted: the triggers below refuse it.
--
-- Release numbers are given under an advisory lock as max + 1, so they have no gaps (a sequence would
-- leave one for every rolled-back release).
CREATE TABLE statistics_releases (
    release            integer PRIMARY KEY CHECK (release >= 1),
    published_at       timestamptz NOT NULL,
    note               text NOT NULL,
    months             date[] NOT NULL,           -- first days of the released months, ascending
    metrics            text[] NOT NULL,           -- ascending
    suppression_k      integer NOT NULL,
    completeness_rule  text NOT NULL,
    specs              json NOT NULL,             -- {metric: {"unit", "kind", "description"}} as published
    metadata           json NOT NULL,             -- reference metadata (NQAF headings), verbatim
    key_id             text NOT NULL,             -- the API key that published it
    cells              integer NOT NULL,
    revisions          integer NOT NULL
);

-- Which (metric, month) each release holds: "the latest release of this month" is one index lookup.
CREATE TABLE statistics_release_contents (
    release integer NOT NULL REFERENCES statistics_releases,
    metric  text NOT NULL,
    period  date NOT NULL,
    PRIMARY KEY (metric, period, release)
);

-- One row per published cell. by_columns is the breakdown of its table in canonical order
-- (district,domain,provenance; '' for none). A breakdown value is '_T' when the table is not broken
-- down by it and '' for "unknown" (a device without a district): keys cannot be NULL, and registered
-- districts and domains are never empty. ordinal is the cell's position within its (table, month), so
-- a release renders in the order it was computed whatever the database collation.
CREATE TABLE statistics_release_cells (
    release                  integer NOT NULL REFERENCES statistics_releases,
    metric                   text NOT NULL,
    by_columns               text NOT NULL,
    period                   date NOT NULL,
    district                 text NOT NULL,
    domain                   text NOT NULL,
    provenance               text NOT NULL,
    ordinal                  integer NOT NULL,
    devices_reporting        integer NOT NULL,
    readings                 bigint,
    mean                     double precision,
    min                      double precision,
    max                      double precision,
    total_consumption        double precision,
    flagged                  bigint,
    devices_expected         integer NOT NULL,
    readings_expected        double precision NOT NULL,
    readings_received        bigint,
    completeness             double precision,
    devices_without_interval integer NOT NULL,
    obs_status               text NOT NULL CHECK (obs_status IN ('A', 'Q', 'O')),
    suppressed               boolean NOT NULL,
    conf_status              text NOT NULL CHECK (conf_status IN ('F', 'C', 'D')),
    PRIMARY KEY (release, metric, by_columns, period, district, domain, provenance)
);

-- One row per published field of a cell that differs from the previous release of its month (a cell
-- new in this release has old_value null; a cell gone has new_value null).
CREATE TABLE statistics_revisions (
    release          integer NOT NULL REFERENCES statistics_releases,
    previous_release integer NOT NULL REFERENCES statistics_releases,
    metric           text NOT NULL,
    by_columns       text NOT NULL,
    period           date NOT NULL,
    district         text NOT NULL,
    domain           text NOT NULL,
    provenance       text NOT NULL,
    field            text NOT NULL,
    old_value        jsonb,
    new_value        jsonb,
    cause            text NOT NULL
                     CHECK (cause IN ('registry', 'late_readings', 'correction', 'disclosure')),
    PRIMARY KEY (release, metric, by_columns, period, district, domain, provenance, field)
);
CREATE INDEX statistics_revisions_period_idx ON statistics_revisions (period, release);

CREATE FUNCTION cityingest_refuse_release_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'released statistics are immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

-- Every table of a release refuses UPDATE and DELETE row by row, and TRUNCATE (which fires no row
-- trigger) as a statement: <table>_immutable and <table>_not_truncated.
DO $$
DECLARE
    released text;
BEGIN
    FOREACH released IN ARRAY ARRAY[
        'statistics_releases', 'statistics_release_contents', 'statistics_release_cells', 'statistics_revisions'
    ] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I '
            'FOR EACH ROW EXECUTE FUNCTION cityingest_refuse_release_change()',
            released || '_immutable', released);
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION cityingest_refuse_release_change()',
            released || '_not_truncated', released);
    END LOOP;
END;
$$;
