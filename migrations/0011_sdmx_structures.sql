-- SDMX structures (codelists, concept scheme, data structure, dataflow), one row per version. A version
-- is written once and never changed: the API serves old versions exactly as they were published. A new
-- version is stored when the device registry or the metric catalogue changes a codelist (api/sdmx/store.py,
-- under an advisory lock; the primary key refuses a second writer of the same version).
CREATE TABLE sdmx_structures (
    kind       text NOT NULL CHECK (kind IN ('codelist', 'conceptscheme', 'datastructure', 'dataflow')),
    agency     text NOT NULL,
    id         text NOT NULL,
    version    text NOT NULL CHECK (version ~ '^[0-9]+\.[0-9]+\.[0-9]+$'),
    -- Name and items (item schemes), or the components and referenced versions (DSD, dataflow).
    content    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, agency, id, version)
);

-- What the stored structures were last checked against: the registry version (migration 0009) and a
-- hash of the catalogue and settings. The API re-checks only when one of them moved.
CREATE TABLE sdmx_structure_sources (
    agency           text NOT NULL,
    dataflow         text NOT NULL,
    registry_version bigint NOT NULL,
    source_hash      text NOT NULL,
    checked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency, dataflow)
);
