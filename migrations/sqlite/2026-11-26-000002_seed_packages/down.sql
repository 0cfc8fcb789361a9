DELETE FROM leases WHERE name = 'sweeper';
DELETE FROM recharge_packages;
