//! RFC 6962/9162 test vectors (as published with transparency-dev/merkle),
//! tampered proofs, and properties over every small tree.

use proptest::prelude::*;

use super::note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
use super::*;

fn h(hex_text: &str) -> Hash {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

fn leaves() -> Vec<Hash> {
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
}

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn roots_match_the_reference() {
    let leaves = leaves();
    for (size, expected) in ROOTS.iter().enumerate() {
        let root = root_hash(&mut leaves.as_slice(), size as u64).unwrap();
        assert_eq!(hex::encode(root), *expected, "size {size}");
    }
    assert_eq!(hex::encode(empty_root()), ROOTS[0]);
}

#[test]
fn inclusion_proofs_match_the_reference() {
    let leaves = leaves();
    let cases: [(u64, u64, Vec<&str>); 4] = [
        (
            0,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            vec![
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            vec![
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, expected) in cases {
        let proof = inclusion_proof(&mut leaves.as_slice(), index, size).unwrap();
        assert_eq!(proof.iter().map(hex::encode).collect::<Vec<_>>(), expected, "leaf {index} of {size}");
        let root = h(ROOTS[size as usize]);
        verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
    }
}

#[test]
fn consistency_proofs_match_the_reference() {
    let leaves = leaves();
    let cases: [(u64, u64, Vec<&str>); 4] = [
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            vec![
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            vec![
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, expected) in cases {
        let proof = consistency_proof(&mut leaves.as_slice(), old, new).unwrap();
        assert_eq!(proof.iter().map(hex::encode).collect::<Vec<_>>(), expected, "{old} -> {new}");
        verify_consistency(old, new, &h(ROOTS[old as usize]), &h(ROOTS[new as usize]), &proof).unwrap();
    }
}

fn flip(hash: &Hash, bit: usize) -> Hash {
    let mut out = *hash;
    out[bit / 8 % 32] ^= 1 << (bit % 8);
    out
}

fn synthetic(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

#[test]
fn tampered_inclusion_proofs_fail() {
    let leaves = synthetic(13);
    let root = root_hash(&mut leaves.as_slice(), 13).unwrap();
    let proof = inclusion_proof(&mut leaves.as_slice(), 6, 13).unwrap();
    verify_inclusion(6, 13, &leaves[6], &proof, &root).unwrap();
    // Wrong index, wrong size, wrong leaf, flipped bits, missing or extra hashes.
    assert!(verify_inclusion(5, 13, &leaves[6], &proof, &root).is_err());
    assert!(verify_inclusion(7, 13, &leaves[6], &proof, &root).is_err());
    // (Sizes 12, 14 and 16 would pass here: leaf 6's path has the same shape in
    // trees of 12 to 16 leaves. The size is bound to the root by the
    // signed checkpoint, never by the proof alone.)
    assert!(verify_inclusion(6, 7, &leaves[6], &proof, &root).is_err());
    assert!(verify_inclusion(6, 6, &leaves[6], &proof, &root).is_err());
    assert!(verify_inclusion(6, 13, &leaves[5], &proof, &root).is_err());
    assert!(verify_inclusion(6, 13, &leaves[6], &proof, &flip(&root, 3)).is_err());
    for i in 0..proof.len() {
        for bit in [0, 77, 255] {
            let mut bad = proof.clone();
            bad[i] = flip(&bad[i], bit);
            assert!(verify_inclusion(6, 13, &leaves[6], &bad, &root).is_err());
        }
    }
    assert!(verify_inclusion(6, 13, &leaves[6], &proof[..proof.len() - 1], &root).is_err());
    let mut longer = proof.clone();
    longer.push(root);
    assert!(verify_inclusion(6, 13, &leaves[6], &longer, &root).is_err());
}

#[test]
fn tampered_consistency_proofs_fail() {
    let leaves = synthetic(20);
    let (old_root, new_root) =
        (root_hash(&mut leaves.as_slice(), 7).unwrap(), root_hash(&mut leaves.as_slice(), 20).unwrap());
    let proof = consistency_proof(&mut leaves.as_slice(), 7, 20).unwrap();
    verify_consistency(7, 20, &old_root, &new_root, &proof).unwrap();
    assert!(verify_consistency(6, 20, &old_root, &new_root, &proof).is_err());
    assert!(verify_consistency(7, 16, &old_root, &new_root, &proof).is_err());
    assert!(verify_consistency(20, 7, &old_root, &new_root, &proof).is_err());
    assert!(verify_consistency(7, 20, &flip(&old_root, 9), &new_root, &proof).is_err());
    assert!(verify_consistency(7, 20, &old_root, &flip(&new_root, 9), &proof).is_err());
    for i in 0..proof.len() {
        let mut bad = proof.clone();
        bad[i] = flip(&bad[i], 100);
        assert!(verify_consistency(7, 20, &old_root, &new_root, &bad).is_err());
    }
    assert!(verify_consistency(7, 20, &old_root, &new_root, &proof[1..]).is_err());
    assert!(verify_consistency(7, 20, &old_root, &new_root, &[]).is_err());
    // A rewritten history (one leaf changed) is not consistent with the old root.
    let mut rewritten = leaves.clone();
    rewritten[3] = leaf_hash(b"rewritten");
    let rewritten_root = root_hash(&mut rewritten.as_slice(), 20).unwrap();
    let forged = consistency_proof(&mut rewritten.as_slice(), 7, 20).unwrap();
    assert!(verify_consistency(7, 20, &old_root, &rewritten_root, &forged).is_err());
}

proptest! {
    #[test]
    fn every_proof_of_every_small_tree_verifies(size in 1u64..70, index_seed in any::<u64>(), old_seed in any::<u64>()) {
        let leaves = synthetic(size);
        let root = root_hash(&mut leaves.as_slice(), size).unwrap();
        let index = index_seed % size;
        let proof = inclusion_proof(&mut leaves.as_slice(), index, size).unwrap();
        prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &root).is_ok());
        let old = old_seed % (size + 1);
        let old_root = root_hash(&mut leaves.as_slice(), old).unwrap();
        let consistency = consistency_proof(&mut leaves.as_slice(), old, size).unwrap();
        prop_assert!(verify_consistency(old, size, &old_root, &root, &consistency).is_ok());
    }
}

// === Signed notes ===

fn signer() -> NoteSigner {
    NoteSigner::from_seed("warden.example/audit", [7u8; 32]).unwrap()
}

#[test]
fn checkpoints_are_signed_notes_that_verify() {
    let checkpoint = Checkpoint { origin: "warden.example/audit".into(), size: 8, root: h(ROOTS[8]) };
    let note = signer().sign(&checkpoint.body()).unwrap();
    assert!(note.starts_with(
        "warden.example/audit\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u{2014} warden.example/audit "
    ));
    let verifier = NoteVerifier::parse(&signer().verifier_key()).unwrap();
    let text = verifier.verify(&note).unwrap();
    assert_eq!(Checkpoint::parse(text).unwrap(), checkpoint);

    // A changed size or root, or another key, does not verify.
    let forged = note.replacen("\n8\n", "\n9\n", 1);
    assert_eq!(verifier.verify(&forged), Err(NoteError::BadSignature("warden.example/audit".into())));
    let other = NoteVerifier::parse(&NoteSigner::from_seed("other", [8u8; 32]).unwrap().verifier_key()).unwrap();
    assert_eq!(other.verify(&note), Err(NoteError::NotSigned("other".into())));
}

#[test]
fn keys_round_trip_in_the_standard_forms() {
    // Many seeds, so some keys' base64 holds '+' and '/'.
    for seed in 0..64u8 {
        let signer = NoteSigner::from_seed("warden.example/audit", [seed; 32]).unwrap();
        let again = NoteSigner::from_private_key(&signer.private_key()).unwrap();
        assert_eq!(again.verifier_key(), signer.verifier_key());
        NoteVerifier::parse(&signer.verifier_key()).unwrap();
    }
    let signer = signer();
    let vkey = signer.verifier_key();
    let parts: Vec<&str> = vkey.splitn(3, '+').collect();
    assert_eq!(parts[0], "warden.example/audit");
    assert_eq!(parts[1].len(), 8);
    assert!(NoteVerifier::parse(&vkey.replacen(parts[1], "00000000", 1)).is_err());
    assert!(NoteSigner::from_seed("bad name", [0; 32]).is_err());
    assert!(NoteSigner::from_private_key("PRIVATE+KEY+x+00+AAAA").is_err());
}
