-- Initial packages: 1 yuan = 100 fen buys 10 coins; bigger packages carry bonus coins.
INSERT INTO recharge_packages (name, coins, bonus_coins, price_fen, sort_order, active, created_at, updated_at) VALUES
    ('体验包', 60, 0, 600, 10, TRUE, 0, 0),
    ('基础包', 300, 30, 3000, 20, TRUE, 0, 0),
    ('进阶包', 680, 100, 6800, 30, TRUE, 0, 0),
    ('专业包', 1280, 260, 12800, 40, TRUE, 0, 0),
    ('旗舰包', 3280, 800, 32800, 50, TRUE, 0, 0);
INSERT INTO leases (name, holder, until_ms, updated_at) VALUES ('sweeper', '', 0, 0);
