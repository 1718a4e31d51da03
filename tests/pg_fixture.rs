//! The throwaway PostgreSQL used by the migration and backup tests works.
mod common;

#[test]
fn throwaway_postgres_starts_and_answers() {
    let pg = common::pg::Pg::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
}
