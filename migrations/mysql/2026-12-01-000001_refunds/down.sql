ALTER TABLE recharge_orders DROP COLUMN refunded_coins, DROP COLUMN refunded_fen;
DROP TABLE refunds;
