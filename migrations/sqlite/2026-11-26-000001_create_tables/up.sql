-- Times are UTC epoch milliseconds; money is integer fen; coins are integers.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    openid VARCHAR(128) NOT NULL,
    unionid VARCHAR(128),
    balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX uq_users_openid ON users (openid);

CREATE TABLE recharge_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name VARCHAR(64) NOT NULL,
    coins BIGINT NOT NULL,
    bonus_coins BIGINT NOT NULL DEFAULT 0,
    price_fen BIGINT NOT NULL,
    sort_order INTEGER NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE recharge_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    order_no VARCHAR(32) NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    package_id BIGINT NOT NULL REFERENCES recharge_packages (id),
    amount_fen BIGINT NOT NULL,
    coins BIGINT NOT NULL,
    bonus_coins BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    prepay_id VARCHAR(64),
    transaction_id VARCHAR(64),
    err_code VARCHAR(64),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    paid_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX uq_orders_order_no ON recharge_orders (order_no);
CREATE UNIQUE INDEX uq_orders_transaction_id ON recharge_orders (transaction_id);
CREATE INDEX ix_orders_status_expires ON recharge_orders (status, expires_at);
CREATE INDEX ix_orders_user ON recharge_orders (user_id, id);

-- The coin ledger: every change of a balance.
CREATE TABLE compute_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    kind VARCHAR(16) NOT NULL,
    delta BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    order_no VARCHAR(32),
    transaction_id VARCHAR(64),
    amount_fen BIGINT,
    request_id VARCHAR(64),
    reason VARCHAR(255),
    created_at BIGINT NOT NULL
);
-- Last line of defence against a double credit: one recharge row per order.
CREATE UNIQUE INDEX uq_logs_kind_order ON compute_logs (kind, order_no);
CREATE UNIQUE INDEX uq_logs_kind_request ON compute_logs (kind, request_id);
CREATE INDEX ix_logs_user ON compute_logs (user_id, id);

CREATE TABLE leases (
    name VARCHAR(64) PRIMARY KEY NOT NULL,
    holder VARCHAR(128) NOT NULL,
    until_ms BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
