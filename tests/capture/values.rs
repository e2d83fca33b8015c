//! Every column type decodes to exactly what `to_jsonb(row)` gives with `TimeZone=UTC`.

use serde_json::Value;

use crate::support::TestDb;
use crate::support::capture::{Tap, config};

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (label text, amount numeric, at timestamptz, tags text[]);
CREATE TABLE typed (
  id int PRIMARY KEY,
  i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, b bool,
  t text, vc varchar(40), ch char(5), u uuid, j json, jb jsonb,
  d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
  by bytea, ip inet, net cidr, mac macaddr,
  ia int[], ta text[], ia2 int[][], na numeric[], tsa timestamptz[], jba jsonb[],
  m mood, dm posint, pr pair, pra pair[], mony money, o oid
);
"#;

const ROWS: &str = r#"
INSERT INTO typed VALUES
 (1, 1, 2, 3, 12.50, 1.5, 2.25, true, 'plain', 'vc', 'ab',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1, "b": [1, 2.50, 1e2]}', '{"b": 2, "a": {"c": null}}',
  '2026-11-23', '04:53:33.420316', '04:53:33+02', '2026-11-23 04:53:33.420316',
  '2026-11-23 04:53:33.420316+00', '1 year 2 mons 3 days 04:05:06.5',
  '\xdeadbeef', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
  '{1,2,3}', '{a,b}', '{{1,2},{3,4}}', '{1.50,-2}', '{"2026-01-01 00:00:00+00"}',
  ARRAY['{"x": 1}'::jsonb], 'happy', 7, ROW('lbl', 9.99, '2026-01-01 12:00:00+00', '{x,y}'),
  ARRAY[ROW('a', 1, NULL, NULL)::pair], '12.34', 42),
 (2, -32768, -2147483648, -9223372036854775808, -123456789012345678901234567890.123456789,
  'NaN', 'Infinity', false, E'quote " backslash \\ tab \t newline \n unicode é ✓ 😀', 'x,y', 'a',
  '00000000-0000-0000-0000-000000000000', '[1e400, -0, 0.1e-2, "s", true, null, {"k": 1E+2}]', '[]',
  '0044-03-15 BC', '24:00:00', '00:00:00-12:30', '0044-03-15 12:00:00 BC',
  '0044-03-15 12:00:00+00 BC', '-1 days -00:00:01',
  '\x', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff',
  '{NULL,-1}', '{"NULL",NULL,"a \"q\"","b,c","d\\e","", " sp ", "{}"}', '[0:1][1:2]={{1,2},{3,4}}',
  '{NaN,1e10,-0.0}', '{}', '{}', 'sad', 1,
  ROW(E'with "quotes", \\ and (parens)', 'NaN', NULL, '{NULL,""}'), '{}', '-0.01', 0),
 (3, 0, 0, 0, 'Infinity', '3.4028235e38', 1e100, NULL, '', '', '', NULL, '"just a string"', '3.0',
  'infinity', '00:00:00', '23:59:59.999999+14', 'infinity', '-infinity', '0',
  NULL, NULL, NULL, NULL, '{}', '{}', NULL, '{-Infinity}', '{infinity}', NULL,
  'ok', 2147483647, ROW(NULL, NULL, NULL, NULL), '{NULL}', '0', 4294967295),
 (4, NULL, NULL, NULL, '-0.000', '-0', 1.5e-7, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

async fn oracle(db: &TestDb, sql: &str) -> Vec<Value> {
    db.client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
        .collect()
}

#[tokio::test]
async fn every_type_equals_to_jsonb() {
    let db = TestDb::new("types").await;
    db.exec(SCHEMA).await;
    let mut tap = Tap::start(config(&db, &["typed"])).await;
    db.exec(ROWS).await;
    let changes = tap.changes(4).await;
    let expected = oracle(&db, "SELECT to_jsonb(typed)::text FROM typed ORDER BY id").await;
    for (change, expected) in changes.iter().zip(&expected) {
        let got = Value::Object(change.new.clone().expect("insert has a new row"));
        assert_eq!(&got, expected, "row {}", expected["id"]);
    }
    // Spot checks that the oracle really is what the spec promises.
    assert_eq!(expected[0]["num"].to_string(), "12.50");
    assert_eq!(expected[0]["tstz"], "2026-11-23T04:53:33.420316+00:00");
    assert_eq!(expected[0]["by"], "\\xdeadbeef");
    assert_eq!(expected[1]["f4"], "NaN");
    tap.stop().await;
}

#[tokio::test]
async fn updates_and_deletes_under_full_identity_carry_the_whole_old_row() {
    let db = TestDb::new("old_rows").await;
    db.exec(SCHEMA).await;
    db.exec("ALTER TABLE typed REPLICA IDENTITY FULL").await;
    db.exec(ROWS).await;
    let before = oracle(&db, "SELECT to_jsonb(typed)::text FROM typed WHERE id = 2").await;
    let mut tap = Tap::start(config(&db, &["typed"])).await;
    db.exec("UPDATE typed SET t = 'changed' WHERE id = 2").await;
    let after = oracle(&db, "SELECT to_jsonb(typed)::text FROM typed WHERE id = 2").await;
    db.exec("DELETE FROM typed WHERE id = 2").await;
    let changes = tap.changes(2).await;
    assert_eq!(
        changes[0].old.clone().map(Value::Object),
        Some(before[0].clone())
    );
    assert_eq!(
        changes[0].new.clone().map(Value::Object),
        Some(after[0].clone())
    );
    assert_eq!(
        changes[1].old.clone().map(Value::Object),
        Some(after[0].clone())
    );
    assert_eq!(changes[1].new, None);
    tap.stop().await;
}
