ALTER TABLE compute_logs
    DROP INDEX ix_logs_kind_request,
    DROP INDEX ix_logs_kind_order,
    ADD UNIQUE KEY uq_logs_kind_request (kind, request_id),
    ADD UNIQUE KEY uq_logs_kind_order (kind, order_no),
    DROP INDEX uq_logs_kind_ref,
    DROP COLUMN ledger_ref;
