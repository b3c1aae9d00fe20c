"""RecBole's own sequential baselines, plus CL4SRec, MoRec and TedRec (which RecBole lacks)."""

from recbole.model.sequential_recommender import GRU4Rec, SASRec

from cprec_recbole.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from cprec_recbole.models.cl4srec import CL4SRec
    from cprec_recbole.models.morec import MoRec
    from cprec_recbole.models.tedrec import TedRec

    register("GRU4Rec", GRU4Rec)
    register("SASRec", SASRec)
    register("CL4SRec", CL4SRec)
    register("MoRec", MoRec)
    register("TedRec", TedRec)
