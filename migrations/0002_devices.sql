-- Device registry. Operators (and the API's PUT /v1/devices/{id}) own the descriptive columns; the
-- consumer only inserts unknown devices as 'unregistered' and moves first_seen/last_seen forward.
CREATE TABLE devices (
    device_id           text PRIMARY KEY,
    domain              text NOT NULL,
    site                text,
    district            text,
    lat                 double precision CHECK (lat BETWEEN -90 AND 90),
    lon                 double precision CHECK (lon BETWEEN -180 AND 180),
    provenance          text NOT NULL DEFAULT 'unknown'
                        CHECK (provenance IN ('official', 'citizen', 'partner', 'unknown')),
    status              text NOT NULL DEFAULT 'unregistered'
                        CHECK (status IN ('active', 'inactive', 'unregistered')),
    -- How often the device is expected to report; NULL = unknown (no staleness alerting).
    expected_interval_s integer CHECK (expected_interval_s > 0),
    registered_at       timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Bridge receive times of the first and latest record of this device.
    first_seen          timestamptz,
    last_seen           timestamptz,
    -- Largest reading timestamp stored for this device.
    last_reading_at     timestamptz,
    CHECK ((lat IS NULL) = (lon IS NULL))
) WITH (fillfactor = 50);  -- every batch moves last_seen: leave room for HOT updates

CREATE INDEX devices_status_idx ON devices (status);
CREATE INDEX devices_domain_district_idx ON devices (domain, district);
