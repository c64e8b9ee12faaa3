//! Bearer tokens of the HTTP API. A token is 32 random bytes, shown once as
//! `stasis_<64 hex>`; the catalog keeps only the blake3 hash of that text, so a leaked
//! catalog gives no usable token.

use crate::error::{Error, ErrorKind, Result};
use crate::record::{Token, TokenMode};
use crate::sql::args;
use crate::{Catalog, decode, ids, now, validate_name};

/// Every token's text starts with this, so it can be recognised (and scanned for).
pub const TOKEN_PREFIX: &str = "stasis_";

/// The stored form of a token's text.
fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    // Unlike ids, a token must never be guessable: no fallback without an OS source.
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Database,
            format!("no OS random source for a token: {e}"),
        )
    })?;
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + 64);
    s.push_str(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

impl Catalog {
    /// Make a token for `tenant` (a name like a VM's). Returns the record and the
    /// token's text, which is not stored and cannot be shown again.
    pub fn create_token(&mut self, tenant: &str, mode: TokenMode) -> Result<(Token, String)> {
        validate_name(tenant).map_err(|e| e.context("tenant"))?;
        let secret = new_secret()?;
        let token = Token {
            id: ids::new_id(),
            tenant: tenant.to_string(),
            read_only: mode == TokenMode::ReadOnly,
            admin: mode == TokenMode::Admin,
            created_at: now(),
            revoked_at: None,
        };
        self.db()?.exec(
            "storing a token",
            "INSERT INTO tokens (id, hash, tenant, read_only, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            args![&token.id, hash(&secret), &token.tenant, token.read_only, token.admin, &token.created_at],
        )?;
        Ok((token, secret))
    }

    /// Every token, revoked ones too, oldest first.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        let sql = format!(
            "SELECT {} FROM tokens ORDER BY created_at, rowid",
            decode::select(decode::TOKEN_COLUMNS)
        );
        self.read("listing tokens", &sql, &[], decode::token)
    }

    /// Revoke a token by id; it authenticates nothing from now on. Revoking a revoked
    /// token changes nothing.
    pub fn revoke_token(&mut self, id: &str) -> Result<Token> {
        self.db()?.exec(
            "revoking a token",
            "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            args![now(), id],
        )?;
        let sql = format!(
            "SELECT {} FROM tokens WHERE id = ?1",
            decode::select(decode::TOKEN_COLUMNS)
        );
        self.read_one("reading a token", &sql, args![id], decode::token)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no token {id:?}")))
    }

    /// The live (not revoked) token whose text is `secret`, if any.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Token>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL",
            decode::select(decode::TOKEN_COLUMNS)
        );
        self.read_one("checking a token", &sql, args![hash(secret)], decode::token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_until_revoked_and_only_its_hash_is_stored() {
        let mut cat = Catalog::open_in_memory().expect("catalog");
        let (tok, secret) = cat
            .create_token("acme", TokenMode::ReadWrite)
            .expect("create");
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(secret.len(), TOKEN_PREFIX.len() + 64);
        let found = cat.authenticate(&secret).expect("auth").expect("valid");
        assert_eq!(found, tok);
        assert_eq!(found.tenant, "acme");
        assert!(!found.read_only);

        // The secret appears nowhere in the database; its hash does.
        let stored: String = cat
            .raw_sqlite()
            .query_row("SELECT hash FROM tokens WHERE id = ?1", [&tok.id], |r| {
                r.get(0)
            })
            .expect("row");
        assert_ne!(stored, secret);
        assert_eq!(stored, hash(&secret));
        let leaks: i64 = cat
            .raw_sqlite()
            .query_row(
                "SELECT count(*) FROM tokens WHERE hash = ?1 OR id = ?1 OR tenant = ?1",
                [&secret],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(leaks, 0);

        // Wrong, truncated or foreign texts authenticate nothing.
        assert!(cat.authenticate("").expect("auth").is_none());
        assert!(
            cat.authenticate(&secret[..secret.len() - 1])
                .expect("auth")
                .is_none()
        );
        assert!(cat.authenticate(&stored).expect("auth").is_none());

        let revoked = cat.revoke_token(&tok.id).expect("revoke");
        assert!(revoked.revoked_at.is_some());
        assert!(cat.authenticate(&secret).expect("auth").is_none());
        // Again: no change.
        assert_eq!(cat.revoke_token(&tok.id).expect("again"), revoked);
        assert_eq!(
            cat.revoke_token("nope").map_err(|e| e.kind()).err(),
            Some(ErrorKind::NotFound)
        );
    }

    #[test]
    fn tokens_are_listed_with_their_tenant_and_mode() {
        let mut cat = Catalog::open_in_memory().expect("catalog");
        let (a, sa) = cat
            .create_token("default", TokenMode::ReadWrite)
            .expect("a");
        let (b, sb) = cat.create_token("acme", TokenMode::ReadOnly).expect("b");
        assert_ne!(sa, sb);
        let all = cat.tokens().expect("list");
        assert_eq!(all, vec![a, b.clone()]);
        assert!(all[1].read_only);
        assert_eq!(
            cat.authenticate(&sb).expect("auth").map(|t| t.id),
            Some(b.id)
        );
        for bad in ["", "Acme", "a b", "-x"] {
            assert!(
                cat.create_token(bad, TokenMode::ReadWrite).is_err(),
                "{bad:?}"
            );
        }
    }
}
