//! Which snapshot a selector chooses — `latest`, `final`, `handoff`, or an id — and the
//! rules every choice but an explicit id obeys: it fails closed (exit 9) rather than pass
//! over a newer manifest that does not verify, a manifest signed in another repository, or
//! (with `--allow-unsigned`) an unsigned snapshot newer than a signed one. Above both the
//! repository and the lease, since `handoff` is the lease's answer.

use anyhow::{Result, bail};

use crate::exit::{self, Exit};
use crate::manifest::Manifest;
use crate::repo::{Listing, Refused, Repository, Selector, untrusted};

/// The snapshot `selector` chooses. Whichever way it is chosen but by an explicit id
/// (`latest`, `final`, `handoff`), a manifest newer than the choice that does not verify
/// refuses it (exit 9): a bucket writer who garbles the newest snapshots' signatures
/// must not roll Signal back through any of them (issue 22, item 1).
pub async fn find(repo: &Repository, selector: &Selector) -> Result<Manifest> {
    if let Selector::Id(wanted) = selector {
        let id = repo.resolve(wanted).await?;
        return repo.manifest(&id).await?.ok_or_else(|| {
            exit::coded(
                Exit::SnapshotNotFound,
                format!("snapshot {id} was forgotten while being looked up"),
            )
        });
    }
    let listing = repo.listing().await?;
    let pick = match selector {
        Selector::Handoff => Some(handed_over(repo, &listing).await?),
        _ => newest(&listing, selector),
    };
    refuse_if_foreign(&listing.refused, repo.location())?;
    refuse_if_newer(&listing.refused, pick.as_ref(), selector)?;
    let pick = pick.ok_or_else(|| {
        exit::coded(
            Exit::SnapshotNotFound,
            format!("the repository {} holds no snapshot yet", repo.location()),
        )
    })?;
    if *selector != Selector::Handoff {
        let oldest_signed = listing
            .snapshots
            .iter()
            .find(|m| !listing.unsigned.contains(&m.id));
        refuse_unsigned_after_signed(
            &pick,
            &listing.unsigned,
            oldest_signed.map(|m| m.id.as_str()),
        )?;
    }
    Ok(pick)
}

/// The snapshot the lease hands over, from `listing`: the lease must be signed and not
/// put back behind a newer snapshot taken under a lease ([`crate::lease::handoff`]).
async fn handed_over(repo: &Repository, listing: &Listing) -> Result<Manifest> {
    let id = crate::lease::handoff(repo, listing).await?;
    if let Some(manifest) = listing.snapshots.iter().find(|m| m.id == id) {
        return Ok(manifest.clone());
    }
    if let Some(refused) = listing.refused.iter().find(|r| r.id == id) {
        return Err(untrusted(&id, &refused.why, repo.location()));
    }
    bail!(
        "the lease names snapshot {id} as the final snapshot its last holder released it \
         with, but {} no longer holds it (pruned or deleted?). Choose a snapshot with \
         `ghostwire-backup snapshots` and pass its id",
        repo.location()
    )
}

/// The newest snapshot, or for `final` the newest final one (else the newest).
fn newest(listing: &Listing, selector: &Selector) -> Option<Manifest> {
    let all = &listing.snapshots;
    let pick = match selector {
        Selector::Final => match all.iter().rfind(|m| m.r#final) {
            Some(last_final) => Some(last_final),
            None => {
                tracing::warn!("no final snapshot in the repository; using the latest");
                all.last()
            }
        },
        _ => all.last(),
    };
    pick.cloned()
}

/// With `--allow-unsigned`, `latest` and `final` never choose an unsigned snapshot newer
/// than a signed one: once the backup side signs, an unsigned snapshot after that is not
/// its (a bucket writer's, most likely). Refused with exit 9, naming it; `--snapshot ID`
/// is a person's choice.
fn refuse_unsigned_after_signed(
    pick: &Manifest,
    unsigned: &std::collections::BTreeSet<String>,
    oldest_signed: Option<&str>,
) -> Result<()> {
    match oldest_signed {
        Some(signed) if unsigned.contains(&pick.id) && pick.id.as_str() > signed => {
            Err(exit::coded(
                Exit::Untrusted,
                format!(
                    "snapshot {} has no signature but is newer than the signed snapshot \
                     {signed}: once the backup side signs, an unsigned snapshot is not its, \
                     so --allow-unsigned does not choose it as latest or final. Remove it \
                     with `ghostwire-backup forget {}` if it is junk, or pass --snapshot ID",
                    pick.id, pick.id
                ),
            ))
        }
        _ => Ok(()), // signed, or no signed snapshot yet: a repository still migrating
    }
}

/// `latest`, `final` and `handoff` never choose past a newer manifest that does not
/// verify: deleting or garbling the newest snapshots' manifests or signatures would
/// otherwise roll Signal back without a word, to the snapshot before them or to an older
/// final one or handoff. Refused manifests dated in the future (or not named like
/// snapshots) are no snapshot at all, and stop nothing.
fn refuse_if_newer(
    refused: &[Refused],
    pick: Option<&Manifest>,
    selector: &Selector,
) -> Result<()> {
    let now = chrono::Utc::now();
    let newer: Vec<&Refused> = refused
        .iter()
        .filter(|refused| {
            crate::manifest::id_time(&refused.id)
                .is_some_and(|taken| taken <= now + crate::manifest::FUTURE_SKEW)
                && pick.is_none_or(|pick| refused.id > pick.id)
        })
        .collect();
    let Some(newest) = newer.last() else {
        return Ok(());
    };
    let chosen = match (pick, selector) {
        (None, _) => "no trustworthy snapshot is older, so nothing".to_string(),
        (Some(pick), Selector::Handoff) => {
            format!(
                "newer than {}, the snapshot the lease hands over, so it",
                pick.id
            )
        }
        (Some(pick), Selector::Final) => format!(
            "newer than {}, the newest trustworthy final snapshot, so {}",
            pick.id, pick.id
        ),
        (Some(pick), _) => format!(
            "newer than {}, the newest trustworthy one, so {}",
            pick.id, pick.id
        ),
    };
    let ids: Vec<&str> = newer.iter().map(|refused| refused.id.as_str()).collect();
    let (these, are) = match ids.len() {
        1 => ("the snapshot manifest", "is"),
        _ => ("the snapshot manifests", "are"),
    };
    Err(exit::coded(
        Exit::Untrusted,
        format!(
            "{these} {} {are} not trustworthy ({}), and {chosen} may not be the latest \
             state: not choosing it silently. Someone with write access to the bucket may \
             have damaged or replaced {these}. Check `ghostwire-backup snapshots`, then pass \
             an explicit --snapshot ID, or remove junk with `ghostwire-backup forget ID`",
            ids.join(", "),
            newest.why,
        ),
    ))
}

/// `latest`, `final` and `handoff` choose nothing while a manifest signed with the verify
/// key names another repository, whatever its date: either it was copied here, or this
/// repository's `repository.json` was replaced so that its own snapshots look foreign and
/// copied ones do not. From the bucket alone nobody can tell which, so a person must.
fn refuse_if_foreign(refused: &[Refused], location: &str) -> Result<()> {
    let foreign: Vec<&Refused> = refused.iter().filter(|refused| refused.foreign).collect();
    let Some(first) = foreign.first() else {
        return Ok(());
    };
    let ids: Vec<&str> = foreign.iter().map(|refused| refused.id.as_str()).collect();
    Err(exit::coded(
        Exit::Untrusted,
        format!(
            "{location} holds {} snapshot manifest(s) signed with this verify key in another \
             repository ({}): {}. Signed objects were copied between repositories that share \
             a signing key, or this repository's repository.json was replaced. Not choosing \
             a snapshot automatically: check `ghostwire-backup snapshots`, remove the copies \
             with `ghostwire-backup forget ID` (or put the original repository.json back), or \
             pass an explicit --snapshot ID",
            ids.len(),
            ids.join(", "),
            first.why
        ),
    ))
}
