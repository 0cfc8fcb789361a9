// Kept by hand: portable types only (BigInt, Integer, Text, Bool), valid on MySQL and SQLite.

diesel::table! {
    users (id) {
        id -> BigInt,
        openid -> Text,
        unionid -> Nullable<Text>,
        balance -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    recharge_packages (id) {
        id -> BigInt,
        name -> Text,
        coins -> BigInt,
        bonus_coins -> BigInt,
        price_fen -> BigInt,
        sort_order -> Integer,
        active -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    recharge_orders (id) {
        id -> BigInt,
        order_no -> Text,
        user_id -> BigInt,
        package_id -> BigInt,
        amount_fen -> BigInt,
        coins -> BigInt,
        bonus_coins -> BigInt,
        status -> Text,
        version -> BigInt,
        prepay_id -> Nullable<Text>,
        transaction_id -> Nullable<Text>,
        err_code -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> BigInt,
        paid_at -> Nullable<BigInt>,
        updated_at -> BigInt,
        refunded_fen -> BigInt,
        refunded_coins -> BigInt,
    }
}

diesel::table! {
    refunds (id) {
        id -> BigInt,
        refund_no -> Text,
        order_no -> Text,
        user_id -> BigInt,
        refund_fen -> BigInt,
        coins -> BigInt,
        status -> Text,
        reason -> Text,
        request_id -> Text,
        wechat_refund_id -> Nullable<Text>,
        wechat_err_code -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        succeeded_at -> Nullable<BigInt>,
        version -> BigInt,
    }
}

diesel::table! {
    compute_logs (id) {
        id -> BigInt,
        user_id -> BigInt,
        kind -> Text,
        delta -> BigInt,
        balance_after -> BigInt,
        order_no -> Nullable<Text>,
        transaction_id -> Nullable<Text>,
        amount_fen -> Nullable<BigInt>,
        request_id -> Nullable<Text>,
        reason -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    leases (name) {
        name -> Text,
        holder -> Text,
        until_ms -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(recharge_orders -> users (user_id));
diesel::joinable!(compute_logs -> users (user_id));
diesel::joinable!(refunds -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    recharge_packages,
    recharge_orders,
    compute_logs,
    leases,
    refunds
);
