-- Times are UTC epoch milliseconds; money is integer fen; coins are integers.
CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    openid VARCHAR(128) NOT NULL,
    unionid VARCHAR(128) NULL,
    balance BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY uq_users_openid (openid),
    CONSTRAINT ck_users_balance CHECK (balance >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE recharge_packages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    coins BIGINT NOT NULL,
    bonus_coins BIGINT NOT NULL DEFAULT 0,
    price_fen BIGINT NOT NULL,
    sort_order INTEGER NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE recharge_orders (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_no VARCHAR(32) NOT NULL,
    user_id BIGINT NOT NULL,
    package_id BIGINT NOT NULL,
    amount_fen BIGINT NOT NULL,
    coins BIGINT NOT NULL,
    bonus_coins BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    prepay_id VARCHAR(64) NULL,
    transaction_id VARCHAR(64) NULL,
    err_code VARCHAR(64) NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    paid_at BIGINT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY uq_orders_order_no (order_no),
    UNIQUE KEY uq_orders_transaction_id (transaction_id),
    KEY ix_orders_status_expires (status, expires_at),
    KEY ix_orders_user (user_id, id),
    CONSTRAINT fk_orders_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT fk_orders_package FOREIGN KEY (package_id) REFERENCES recharge_packages (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The coin ledger: every change of a balance.
CREATE TABLE compute_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    delta BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    order_no VARCHAR(32) NULL,
    transaction_id VARCHAR(64) NULL,
    amount_fen BIGINT NULL,
    request_id VARCHAR(64) NULL,
    reason VARCHAR(255) NULL,
    created_at BIGINT NOT NULL,
    -- Last line of defence against a double credit: one recharge row per order.
    UNIQUE KEY uq_logs_kind_order (kind, order_no),
    UNIQUE KEY uq_logs_kind_request (kind, request_id),
    KEY ix_logs_user (user_id, id),
    CONSTRAINT fk_logs_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(128) NOT NULL,
    until_ms BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
