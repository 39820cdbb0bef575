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
    table_of(columns::VNIS, vnis, vni_cells)
}

/// A VNI's numbers, in the order of `keys::VNI` and `columns::VNIS` (the
/// two are the same).
fn vni_cells(v: &VniJson) -> Vec<String> {
    vec![
        v.vni.to_string(),
        v.routes.to_string(),
        v.announcers.to_string(),
        v.subscribers.to_string(),
    ]
}
