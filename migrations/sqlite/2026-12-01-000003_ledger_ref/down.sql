DROP INDEX ix_logs_kind_request;
DROP INDEX ix_logs_kind_order;
CREATE UNIQUE INDEX uq_logs_kind_request ON compute_logs (kind, request_id);
CREATE UNIQUE INDEX uq_logs_kind_order ON compute_logs (kind, order_no);
DROP INDEX uq_logs_kind_ref;
