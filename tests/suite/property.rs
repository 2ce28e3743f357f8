//! Finding the next "a change nobody noticed" before a user does: generated tables (keys of
//! every type a row key may have, primary or unique, each replica identity; watched and ignored
//! columns of many types, TOASTed values among them), attached, then random INSERT / UPDATE /
//! DELETE / TRUNCATE statements, single-row, multi-row and bulk. Both direct sources follow
//! the same database at once. After each statement the stored images of the table's rows
//! (`ROW(…)::text`, so a citext whose case changed or a numeric whose scale changed is a
//! change) say what each source must have reported: every row whose watched value changed (or
//! that came or went) evicted or its table flushed, and no row whose ignored columns alone
//! changed evicted.
//!
//! The seed is printed; `NEARCACHE_PROPERTY_SEED=<seed>` replays a run and
//! `NEARCACHE_PROPERTY_STATEMENTS=<n>` sets its length (default 300).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use nearcache_tests::TestDb;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::listener::{start, Running};
use crate::support::{exec, Source};

const HB: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);
/// Rows a table may hold before the generator prefers deleting.
const MANY: usize = 400;

#[derive(Debug, Clone, Copy)]
enum Key {
    Int4,
    Int8,
    Text,
    Uuid,
}

#[derive(Debug, Clone, Copy)]
enum Identity {
    Default,
    Index,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    /// text with a case-insensitive (nondeterministic) collation
    NdText,
    Citext,
    Numeric,
    Json,
    Jsonb,
    IntArray,
    TextArray,
    Bytea,
    /// an enum
    Mood,
    /// a domain over numeric
    Amount,
    Timestamptz,
    /// text stored out of line (TOAST), about 3 kB
    Big,
    /// fixed-length types beside `Timestamptz`, which the WAL source digests together
    Int8,
    Bool,
}

const TYPES: [Ty; 14] = [
    Ty::NdText,
    Ty::Citext,
    Ty::Numeric,
    Ty::Json,
    Ty::Jsonb,
    Ty::IntArray,
    Ty::TextArray,
    Ty::Bytea,
    Ty::Mood,
    Ty::Amount,
    Ty::Timestamptz,
    Ty::Big,
    Ty::Int8,
    Ty::Bool,
];

impl Ty {
    fn sql(self) -> &'static str {
        match self {
            Ty::NdText => "text COLLATE nc_nocase",
            Ty::Citext => "citext",
            Ty::Numeric => "numeric",
            Ty::Json => "json",
            Ty::Jsonb => "jsonb",
            Ty::IntArray => "int[]",
            Ty::TextArray => "text[]",
            Ty::Bytea => "bytea",
            Ty::Mood => "nc_mood",
            Ty::Amount => "nc_amount",
            Ty::Timestamptz => "timestamptz",
            Ty::Big => "text",
            Ty::Int8 => "bigint",
            Ty::Bool => "boolean",
        }
    }

    /// A new value.
    fn fresh(self, rng: &mut StdRng) -> String {
        if rng.random_bool(0.08) {
            return "NULL".into();
        }
        let n: u32 = rng.random_range(0..1000);
        let word = |rng: &mut StdRng| -> String {
            ["alpha", "Bravo", "CHARLIE", "delta"][rng.random_range(0..4)].to_string()
        };
        match self {
            Ty::NdText => format!("'{} {n}'", word(rng)),
            Ty::Citext => format!("'{}{n}@example.com'", word(rng)),
            Ty::Numeric | Ty::Amount => {
                let scale = "0".repeat(rng.random_range(0..3));
                format!("{n}.5{scale}")
            }
            Ty::Json | Ty::Jsonb => {
                let space = " ".repeat(rng.random_range(0..2));
                format!("'{{\"a\":{space}{n}}}'")
            }
            Ty::IntArray => format!("'{{{n},{}}}'", n % 7),
            Ty::TextArray => format!("ARRAY['{}', 'x{n}']", word(rng)),
            Ty::Bytea => format!("decode('{:04x}', 'hex')", n),
            Ty::Mood => format!("'{}'", ["sad", "ok", "happy"][rng.random_range(0..3)]),
            Ty::Timestamptz => format!("'2026-01-01 00:00:00+00'::timestamptz + interval '{n} s'"),
            Ty::Big => format!("repeat(md5('{n}'), 100)"),
            Ty::Int8 => format!("{n}"),
            Ty::Bool => ["true", "false"][usize::from(n.is_multiple_of(2))].to_string(),
        }
    }

    /// An expression of column `c` that the type's equality may call equal to it while its
    /// stored value differs (or is the same).
    fn twin(self, c: &str, rng: &mut StdRng) -> String {
        let other = rng.random_bool(0.5);
        match self {
            Ty::NdText if other => format!("upper({c})"),
            Ty::NdText => format!("lower({c})"),
            Ty::Citext if other => format!("upper({c}::text)::citext"),
            Ty::Citext => format!("lower({c}::text)::citext"),
            Ty::Numeric if other => format!("{c} * 1.0"),
            Ty::Numeric => format!("round({c}, 1)"),
            Ty::Amount => format!("({c} * 1.0)::nc_amount"),
            Ty::Json => format!("({c}::text || ' ')::json"),
            Ty::Jsonb => format!("({c}::text || ' ')::jsonb"),
            Ty::IntArray => format!("{c} || '{{}}'::int[]"),
            Ty::TextArray => format!("ARRAY(SELECT upper(x) FROM unnest({c}) x)"),
            Ty::Bytea => format!("{c} || ''::bytea"),
            Ty::Mood => c.to_string(),
            Ty::Timestamptz if other => format!("{c} + interval '1 microsecond'"),
            Ty::Timestamptz => format!("({c} AT TIME ZONE 'Asia/Tokyo') AT TIME ZONE 'Asia/Tokyo'"),
            Ty::Big if other => format!("overlay({c} placing 'X' from 1500 for 1)"),
            Ty::Big => c.to_string(),
            Ty::Int8 if other => format!("{c} + 1"),
            Ty::Int8 => format!("{c} + 0"),
            Ty::Bool if other => format!("NOT {c}"),
            Ty::Bool => c.to_string(),
        }
    }
}

#[derive(Debug)]
struct Column {
    name: String,
    ty: Ty,
    ignored: bool,
}

#[derive(Debug)]
struct Table {
    name: String,
    key: Key,
    primary: bool,
    identity: Identity,
    columns: Vec<Column>,
    /// Keys made so far (for fresh ones).
    made: u64,
}

impl Table {
    fn generate(i: usize, rng: &mut StdRng) -> Self {
        let key = [Key::Int4, Key::Int8, Key::Text, Key::Uuid][rng.random_range(0..4)];
        let identity = [Identity::Default, Identity::Index, Identity::Full][rng.random_range(0..3)];
        let n = rng.random_range(2..6);
        let mut columns: Vec<Column> = (0..n)
            .map(|c| Column {
                name: format!("c{c}"),
                ty: TYPES[rng.random_range(0..TYPES.len())],
                ignored: rng.random_bool(0.3),
            })
            .collect();
        // At least one watched column.
        columns[0].ignored = false;
        Self {
            name: format!("gen{i}"),
            key,
            primary: rng.random_bool(0.5),
            identity,
            columns,
            made: 0,
        }
    }

    fn ddl(&self) -> String {
        let key_type = match self.key {
            Key::Int4 => "int4",
            Key::Int8 => "int8",
            Key::Text => "text",
            Key::Uuid => "uuid",
        };
        let mut cols = if self.primary {
            format!("k {key_type} PRIMARY KEY")
        } else {
            format!("id bigserial PRIMARY KEY, k {key_type} NOT NULL UNIQUE")
        };
        for c in &self.columns {
            let _ = write!(cols, ", {} {}", c.name, c.ty.sql());
        }
        let t = &self.name;
        let mut sql = format!("CREATE TABLE {t} ({cols});\n");
        for c in self.columns.iter().filter(|c| c.ty == Ty::Big) {
            let _ = writeln!(
                sql,
                "ALTER TABLE {t} ALTER COLUMN {} SET STORAGE EXTERNAL;",
                c.name
            );
        }
        match self.identity {
            Identity::Default => {}
            Identity::Index => {
                let index = if self.primary {
                    format!("{t}_pkey")
                } else {
                    format!("{t}_k_key")
                };
                let _ = writeln!(sql, "ALTER TABLE {t} REPLICA IDENTITY USING INDEX {index};");
            }
            Identity::Full => {
                let _ = writeln!(sql, "ALTER TABLE {t} REPLICA IDENTITY FULL;");
            }
        }
        let ignored: Vec<&str> = self
            .columns
            .iter()
            .filter(|c| c.ignored)
            .map(|c| c.name.as_str())
            .collect();
        let _ = writeln!(
            sql,
            "SELECT nearcache_attach('{t}', 'k', '{{{}}}');",
            ignored.join(",")
        );
        sql
    }

    /// A key expression for a new row (`g`: generate_series' counter, in bulk inserts).
    fn new_key(&mut self, bulk: bool) -> String {
        self.made += 1;
        let base = self.made * 1000;
        match (self.key, bulk) {
            (Key::Int4 | Key::Int8, false) => base.to_string(),
            (Key::Int4 | Key::Int8, true) => format!("{base} + g"),
            (Key::Text, false) => format!("'k{base}'"),
            (Key::Text, true) => format!("'k{base}-' || g"),
            (Key::Uuid, _) => "gen_random_uuid()".into(),
        }
    }

    fn literal(&self, key: &str) -> String {
        match self.key {
            Key::Int4 | Key::Int8 => key.to_string(),
            Key::Text | Key::Uuid => format!("'{key}'"),
        }
    }

    /// The stored images of each row: key → (watched, ignored).
    async fn images(&self, pool: &sqlx::PgPool) -> BTreeMap<String, (String, String)> {
        let list = |ignored: bool| {
            let mut names: Vec<&str> = self
                .columns
                .iter()
                .filter(|c| c.ignored == ignored)
                .map(|c| c.name.as_str())
                .collect();
            names.push("0");
            names.join(", ")
        };
        let sql = format!(
            "SELECT k::text, md5(ROW({})::text), md5(ROW({})::text) FROM {}",
            list(false),
            list(true),
            self.name
        );
        sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, w, i)| (k, (w, i)))
            .collect()
    }

    /// A random statement on this table, whose rows are `keys` now.
    fn statement(&mut self, keys: &[String], rng: &mut StdRng) -> String {
        let t = self.name.clone();
        let pick = |rng: &mut StdRng, n: usize| -> Vec<String> {
            (0..n.clamp(1, keys.len()))
                .map(|_| keys[rng.random_range(0..keys.len())].clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let roll = rng.random_range(0..100);
        let names: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        if keys.is_empty() || (roll < 25 && keys.len() < MANY) {
            // INSERT: one row, a few, or many.
            let rows = match rng.random_range(0..10) {
                0 => rng.random_range(50..150),
                1..=3 => rng.random_range(2..5),
                _ => 1,
            };
            if rows > 5 {
                let key = self.new_key(true);
                let values: Vec<String> = self.columns.iter().map(|c| c.ty.fresh(rng)).collect();
                return format!(
                    "INSERT INTO {t} (k, {}) SELECT {key}, {} FROM generate_series(1, {rows}) g",
                    names.join(", "),
                    values.join(", ")
                );
            }
            let mut tuples = Vec::new();
            for _ in 0..rows {
                let mut v = vec![self.new_key(false)];
                v.extend(self.columns.iter().map(|c| c.ty.fresh(rng)));
                tuples.push(format!("({})", v.join(", ")));
            }
            return format!(
                "INSERT INTO {t} (k, {}) VALUES {}",
                names.join(", "),
                tuples.join(", ")
            );
        }
        if roll < 27 {
            return format!("TRUNCATE {t}");
        }
        if roll < 40 || keys.len() >= MANY {
            let chosen = if rng.random_bool(0.2) {
                pick(rng, keys.len() / 2)
            } else {
                let n = rng.random_range(1..4);
                pick(rng, n)
            };
            return format!("DELETE FROM {t} WHERE k IN ({})", self.in_list(&chosen));
        }
        // UPDATE: some rows, or all.
        let filter = match rng.random_range(0..10) {
            0 => String::new(),
            _ => {
                let n = rng.random_range(1..4);
                let chosen = pick(rng, n);
                format!(" WHERE k IN ({})", self.in_list(&chosen))
            }
        };
        let ignored: Vec<&Column> = self.columns.iter().filter(|c| c.ignored).collect();
        let mut sets = Vec::new();
        if !ignored.is_empty() && rng.random_bool(0.3) {
            // Ignored columns alone.
            for c in ignored {
                sets.push(format!("{} = {}", c.name, c.ty.fresh(rng)));
            }
        } else {
            for c in &self.columns {
                if rng.random_bool(0.5) {
                    let value = match rng.random_range(0..10) {
                        0..=4 => c.ty.fresh(rng),
                        5..=8 => c.ty.twin(&c.name, rng),
                        _ => c.name.clone(),
                    };
                    sets.push(format!("{} = {value}", c.name));
                }
            }
            if filter.contains(" IN (") && !filter.contains(',') && rng.random_bool(0.1) {
                // One row's key changes.
                sets.push(format!("k = {}", self.new_key(false)));
            }
            if sets.is_empty() {
                sets.push(format!("{0} = {0}", self.columns[0].name));
            }
        }
        format!("UPDATE {t} SET {}{filter}", sets.join(", "))
    }

    fn in_list(&self, keys: &[String]) -> String {
        keys.iter()
            .map(|k| self.literal(k))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a statement must have caused on one table: rows to evict, rows not to.
struct Expected {
    evict: BTreeSet<String>,
    keep: BTreeSet<String>,
}

fn expected(
    before: &BTreeMap<String, (String, String)>,
    after: &BTreeMap<String, (String, String)>,
) -> Expected {
    let mut evict = BTreeSet::new();
    let mut keep = BTreeSet::new();
    for key in before.keys().chain(after.keys()) {
        match (before.get(key), after.get(key)) {
            (Some((w0, i0)), Some((w1, i1))) => {
                if w0 != w1 {
                    evict.insert(key.clone());
                } else if i0 != i1 {
                    keep.insert(key.clone());
                }
            }
            _ => {
                evict.insert(key.clone());
            }
        }
    }
    Expected { evict, keep }
}

/// What `events` (one source's, for one statement) fail of `expected`, on `table`.
fn violations(table: &str, events: &[String], expected: &Expected) -> Vec<String> {
    // A flush of everything is the source's own safety (at start, a transaction of the slot's
    // start that became visible undecoded), not a verdict on this statement.
    let table_flushed = events.iter().any(|e| *e == format!("{table}:*"));
    let flushed = table_flushed || events.iter().any(|e| e == "flush");
    let evicted: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.strip_prefix(table)?.strip_prefix(':'))
        .collect();
    let mut out = Vec::new();
    if events.iter().any(|e| e == "bypass") {
        out.push("the source bypassed".to_string());
    }
    for key in &expected.evict {
        if !flushed && !evicted.contains(key.as_str()) {
            out.push(format!("row {key} changed and was not evicted"));
        }
    }
    for key in &expected.keep {
        if evicted.contains(key.as_str()) {
            out.push(format!(
                "row {key} changed only ignored columns and was evicted"
            ));
        }
    }
    if table_flushed && expected.evict.is_empty() && !expected.keep.is_empty() {
        out.push(format!(
            "{table} was flushed for a change of ignored columns alone"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_of_a_watched_stored_value_reaches_both_direct_sources() {
    let seed = std::env::var("NEARCACHE_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let statements: usize = std::env::var("NEARCACHE_PROPERTY_STATEMENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    eprintln!(
        "property: seed {seed}, {statements} statements (replay: NEARCACHE_PROPERTY_SEED={seed})"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(
        &pool,
        "CREATE EXTENSION IF NOT EXISTS citext;
         CREATE COLLATION nc_nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TYPE nc_mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN nc_amount AS numeric CHECK (VALUE >= 0);
         CREATE TABLE nc_mark (n int PRIMARY KEY);
         SELECT nearcache_attach('nc_mark', 'n');",
    )
    .await;
    let mut tables: Vec<Table> = (0..4).map(|i| Table::generate(i, &mut rng)).collect();
    if !tables.iter().flat_map(|t| &t.columns).any(|c| c.ignored) {
        tables[0].columns[1].ignored = true;
    }
    for t in &tables {
        eprintln!("property: {t:?}");
        exec(&pool, &t.ddl()).await;
    }
    let sources = [Source::Notify, Source::Wal];
    let running: Vec<Running> = sources
        .iter()
        .map(|s| start(*s, db.url(), HB, TIMEOUT))
        .collect();
    let mut at = Vec::new();
    for r in &running {
        at.push(r.until("coherent", 0, "coherent").await + 1);
    }

    let (mut evictions, mut kept) = (0, 0);
    for n in 0..statements {
        let i = rng.random_range(0..tables.len());
        let before = tables[i].images(&pool).await;
        let keys: Vec<String> = before.keys().cloned().collect();
        let sql = tables[i].statement(&keys, &mut rng);
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
        {
            panic!("property (seed {seed}, statement {n}): {sql}: {e}");
        }
        let after = tables[i].images(&pool).await;
        let expected = expected(&before, &after);
        evictions += expected.evict.len();
        kept += expected.keep.len();
        exec(&pool, &format!("INSERT INTO nc_mark VALUES ({n})")).await;
        for (s, r) in running.iter().enumerate() {
            let mark = r.until(&sql, at[s], &format!("nc_mark:{n}")).await;
            let events = r.handler.events()[at[s]..mark].to_vec();
            at[s] = mark + 1;
            let wrong = violations(&tables[i].name, &events, &expected);
            assert!(
                wrong.is_empty(),
                "property (seed {seed}, statement {n}) under {:?}: {sql}\n{}\nevents: {events:?}",
                sources[s],
                wrong.join("\n")
            );
        }
    }
    eprintln!("property: {statements} statements, {evictions} rows changed, {kept} changed only ignored columns: every source right");
    assert!(
        evictions > 0 && kept > 0,
        "the run tried both kinds of change"
    );
    for r in running {
        r.stop().await;
    }
}
