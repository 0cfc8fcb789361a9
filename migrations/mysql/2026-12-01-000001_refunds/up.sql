-- Refunds (issue 12). A refund's coins are reserved in the transaction that creates its row;
-- its ledger rows (kind `refund`, and `refund_reversal` when the money never moves) carry the
-- refund_no in request_id, so the unique (kind, request_id) allows one of each per refund
-- while (kind, order_no) keeps meaning "one recharge per order" (refund rows leave order_no NULL).
CREATE TABLE refunds (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    refund_no VARCHAR(32) NOT NULL,
    order_no VARCHAR(32) NOT NULL,
    user_id BIGINT NOT NULL,
    refund_fen BIGINT NOT NULL,
    coins BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    reason VARCHAR(255) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    wechat_refund_id VARCHAR(64) NULL,
    wechat_err_code VARCHAR(64) NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    succeeded_at BIGINT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    UNIQUE KEY uq_refunds_refund_no (refund_no),
    UNIQUE KEY uq_refunds_request_id (request_id),
    KEY ix_refunds_order (order_no, id),
    KEY ix_refunds_status_updated (status, updated_at),
    CONSTRAINT fk_refunds_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT ck_refunds_fen CHECK (refund_fen > 0),
    CONSTRAINT ck_refunds_coins CHECK (coins >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What the refunds still holding money took of the order (processing, succeeded, abnormal).
ALTER TABLE recharge_orders
    ADD COLUMN refunded_fen BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN refunded_coins BIGINT NOT NULL DEFAULT 0;
