//! `mbctl vnis` and `mbctl vni` in table mode.

use crate::contract::{columns, keys};
use crate::model::VniJson;
use crate::render::table::{key_values, labelled, table_of};

/// The `key: value` lines of `mbctl vni`.
pub fn vni_details(v: &VniJson) -> String {
    key_values(&labelled(keys::VNI, vni_cells(v)))
}

/// The table of `mbctl vnis`.
pub fn vnis_table(vnis: &[VniJson]) -> String {
    table_of(columns::VNIS, vnis, |v| {
        // The table leaves out the digest's route count: it is ROUTES.
        let mut cells = vni_cells(v);
        cells.remove(4);
        cells
    })
}

/// A VNI's numbers, in the order of `keys::VNI`; `columns::VNIS` is the
/// same without `digest_routes`.
fn vni_cells(v: &VniJson) -> Vec<String> {
    vec![
        v.vni.to_string(),
        v.routes.to_string(),
        v.announcers.to_string(),
        v.subscribers.to_string(),
        v.digest_routes.to_string(),
        v.digest.clone(),
    ]
}
