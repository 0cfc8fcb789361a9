// Kept by hand: portable types only (BigInt, Integer, Text, Bool, Binary), valid on MySQL and SQLite.

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

diesel::table! {
    reconciliations (bill_date) {
        bill_date -> Text,
        status -> Text,
        error -> Nullable<Text>,
        wechat_count -> BigInt,
        wechat_paid_fen -> BigInt,
        wechat_refund_fen -> BigInt,
        wechat_fee_fen -> BigInt,
        local_count -> BigInt,
        local_paid_fen -> BigInt,
        local_refund_fen -> BigInt,
        difference_count -> BigInt,
        attempts -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    reconciliation_differences (id) {
        id -> BigInt,
        bill_date -> Text,
        kind -> Text,
        order_no -> Nullable<Text>,
        transaction_id -> Nullable<Text>,
        out_refund_no -> Nullable<Text>,
        wechat_fen -> Nullable<BigInt>,
        local_fen -> Nullable<BigInt>,
        action -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    reconciliation_bills (bill_date) {
        bill_date -> Text,
        gzip -> Binary,
        fetched_at -> BigInt,
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
