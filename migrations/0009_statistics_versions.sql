-- Change counters that let the API keep the monthly statistics of closed months in memory and know,
-- in the same snapshot as any query, whether what it keeps is still what the store holds. Rollups
-- are written only by the consumer's batch transaction; anyone editing them by hand must restart the
-- API (or bump device_registry_version) for it to forget what it keeps.
--
-- rollup_versions: bumped by the consumer, in the transaction of every batch, for each month that the
-- batch changed in the monthly rollup (new readings, and counter increases corrected by a late reading)
-- and each partition of the batch. Keyed by partition because a batch holds its partitions' advisory
-- locks: two consumer connections never update the same row, so the counter adds no lock waits. The
-- version of a month is the sum over its rows.
CREATE TABLE rollup_versions (
    month     timestamptz NOT NULL,
    topic     text NOT NULL,
    partition integer NOT NULL,
    version   bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (month, topic, partition)
);

-- device_registry_version: one row, bumped by any change to a device that moves statistics cells or
-- completeness: registering or deleting a device, or changing its domain, district, provenance,
-- status, expected interval or registration time. The consumer's own writes (auto-registering an
-- unknown device as 'unregistered', moving first/last seen) do not bump it: the readings of such a
-- device bump their months in the same transaction.
CREATE TABLE device_registry_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO device_registry_version VALUES (true, 0);

CREATE FUNCTION cityingest_bump_device_registry_version() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE device_registry_version SET version = version + 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER devices_registered
AFTER INSERT ON devices
FOR EACH ROW WHEN (NEW.status <> 'unregistered')
EXECUTE FUNCTION cityingest_bump_device_registry_version();

CREATE TRIGGER devices_described
AFTER UPDATE OF domain, district, provenance, status, expected_interval_s, registered_at ON devices
FOR EACH ROW WHEN ((OLD.domain, OLD.district, OLD.provenance, OLD.status, OLD.expected_interval_s,
                    OLD.registered_at)
                   IS DISTINCT FROM (NEW.domain, NEW.district, NEW.provenance, NEW.status,
                                     NEW.expected_interval_s, NEW.registered_at))
EXECUTE FUNCTION cityingest_bump_device_registry_version();

CREATE TRIGGER devices_deleted
AFTER DELETE ON devices
FOR EACH ROW
EXECUTE FUNCTION cityingest_bump_device_registry_version();
