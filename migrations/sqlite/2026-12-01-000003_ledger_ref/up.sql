-- The same rule as MySQL's migration of this name (see there for why: a Galera cluster gives a
-- unique key with a NULL column one certification key for every row): one unique key over
-- (kind, request_id or else order_no), the old unique keys kept as plain indexes.
CREATE UNIQUE INDEX uq_logs_kind_ref ON compute_logs (kind, COALESCE(request_id, order_no));
DROP INDEX uq_logs_kind_order;
DROP INDEX uq_logs_kind_request;
CREATE INDEX ix_logs_kind_order ON compute_logs (kind, order_no);
CREATE INDEX ix_logs_kind_request ON compute_logs (kind, request_id);
