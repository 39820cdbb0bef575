//! `mbctl vnis` and `mbctl vni` in table mode.

use crate::contract::{columns, keys};
use crate::model::VniJson;
use crate::render::table::{key_values, labelled, Table};

/// The `key: value` lines of `mbctl vni`.
pub fn vni_details(v: &VniJson) -> String {
    // In the order of `keys::VNI`.
    let values = vec![
        v.vni.to_string(),
        v.routes.to_string(),
        v.announcers.to_string(),
        v.subscribers.to_string(),
    ];
    key_values(&labelled(keys::VNI, values))
}

/// The table of `mbctl vnis`.
pub fn vnis_table(vnis: &[VniJson]) -> String {
    let mut t = Table::new(columns::VNIS);
    for v in vnis {
        t.row(vec![
            v.vni.to_string(),
            v.routes.to_string(),
            v.announcers.to_string(),
            v.subscribers.to_string(),
        ]);
    }
    t.render()
}
