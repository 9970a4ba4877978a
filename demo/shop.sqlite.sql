-- The embedded demo's shop (SQLite). demo/shop.db is built from this file
-- (python3 -c "import sqlite3; sqlite3.connect('demo/shop.db').executescript(open('demo/shop.sqlite.sql').read())").
DROP TABLE IF EXISTS order_events;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS customers;
CREATE TABLE customers (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT,
    vip        BOOLEAN NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    amount      NUMERIC(12, 2) NOT NULL,
    placed_on   DATE NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);
CREATE TABLE "Order Events" (
    id       INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    happened TIMESTAMP NOT NULL
);
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2000)
INSERT INTO customers SELECT n, 'Customer ' || n, 'c' || n || '@example.com', n % 7 = 0,
       datetime('2024-01-01 00:00:00', '+' || n || ' hours') FROM g WHERE n <= 500;
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2000)
INSERT INTO orders SELECT n, 1 + n % 500, round(n * 3.17, 2), date('2024-01-01', '+' || (n % 365) || ' days'),
       datetime('2024-06-01 12:00:00', '+' || n || ' minutes') FROM g;
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000)
INSERT INTO "Order Events" SELECT n, 1 + n % 2000, CASE n % 3 WHEN 0 THEN 'placed' WHEN 1 THEN 'paid' ELSE 'shipped' END,
       datetime('2024-06-01 12:00:00', '+' || (n * 30) || ' seconds') FROM g;
