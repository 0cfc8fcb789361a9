DROP TABLE leases;
DROP TABLE compute_logs;
DROP TABLE recharge_orders;
DROP TABLE recharge_packages;
DROP TABLE users;
