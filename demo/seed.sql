-- A small shop, re-created on every demo run.
DROP SCHEMA IF EXISTS datasync_demo CASCADE;
CREATE SCHEMA datasync_demo;
SET search_path = datasync_demo;

CREATE TABLE customers (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    email      text,
    vip        boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL
);
INSERT INTO customers
SELECT g, 'Customer ' || g, 'c' || g || '@example.com', g % 7 = 0,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 500) AS g;

CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount      numeric(12, 2) NOT NULL,
    placed_on   date NOT NULL,
    details     jsonb,
    updated_at  timestamp NOT NULL
);
INSERT INTO orders
SELECT g, 1 + g % 500, round((g * 3.17)::numeric, 2), date '2024-01-01' + g % 365,
       jsonb_build_object('items', g % 5 + 1, 'gift', g % 11 = 0),
       timestamp '2024-06-01 12:00:00' + g * interval '1 minute'
FROM generate_series(1, 2000) AS g;

CREATE TABLE "Order Events" (
    event_id   bigint PRIMARY KEY,
    "order"    bigint NOT NULL,
    kind       text NOT NULL,
    happened   timestamptz NOT NULL
);
INSERT INTO "Order Events"
SELECT g, 1 + g % 2000, (ARRAY['placed', 'paid', 'shipped'])[1 + g % 3],
       timestamptz '2024-06-01 00:00:00+00' + g * interval '30 seconds'
FROM generate_series(1, 3000) AS g;
