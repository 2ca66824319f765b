"""De-identification of DICOM headers: what medmtl blanks, removes and replaces before anything leaves a run."""

from __future__ import annotations

import logging
import secrets

import pydicom
from pydicom.dataset import Dataset

__all__ = ["deidentify_dataset"]

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ de-identification

# DICOM PS3.15 Annex E basic application level confidentiality profile (Table E.1-1), by action.
# Z: kept empty (type 2 attributes of common IODs); X: removed. Dates/times, person names and
# instance UIDs are handled by VR in `deidentify_dataset`, private tags are removed.
_BLANK = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
    "StudyID", "StudyDate", "StudyTime", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "VerifyingObserverName", "PersonName",
)  # fmt: skip
_REMOVE = (
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "InstitutionalDepartmentTypeCodeSequence", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence",
    "StationName", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorsName", "OperatorIdentificationSequence",
    "RequestingPhysician", "RequestingService", "ScheduledPerformingPhysicianName", "OrderEnteredBy",
    "OrderEntererLocation", "OrderCallbackPhoneNumber", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference", "MilitaryRank",
    "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "CountryOfResidence", "RegionOfResidence", "MedicalAlerts", "Allergies", "SmokingStatus",
    "LastMenstrualDate", "PregnancyStatus", "PatientInsurancePlanCodeSequence", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientState", "CurrentPatientLocation",
    "PatientInstitutionResidence", "AdmissionID", "IssuerOfAdmissionIDSequence", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "DischargeDiagnosisDescription", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "VisitComments", "ReasonForVisit", "StudyDescription", "SeriesDescription",
    "ProtocolName", "RequestedProcedureDescription", "RequestedProcedureID", "ReasonForTheRequestedProcedure",
    "RequestedProcedureComments", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "PerformedLocation",
    "PerformedStationName", "PerformedStationAETitle", "ScheduledStationName", "ScheduledStationAETitle",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedPatientPhotoSequence", "ImageComments",
    "StudyComments", "InterpretationText", "AcquisitionComments", "FrameComments", "TextComments", "TextString",
    "DerivationDescription", "DeviceSerialNumber", "DeviceUID", "PlateID", "CassetteID", "GantryID",
    "DetectorID", "GeneratorID", "SourceSerialNumber", "ModifiedAttributesSequence",
    "OriginalAttributesSequence", "DigitalSignaturesSequence", "DataSetTrailingPadding", "ContentSequence",
    "AuthorObserverSequence", "ParticipantSequence", "CustodialOrganizationSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription",
    "InstanceCreatorUID", "StorageMediaFileSetID", "StorageMediaFileSetUID", "ReferringPhysicianIdentificationSequence",
    "PersonAddress", "PersonTelephoneNumbers", "PersonIdentificationCodeSequence", "DistributionName",
    "DistributionAddress", "InsurancePlanIdentification", "IdentifyingComments",
)  # fmt: skip
_DATE_VRS = {"DA", "DT", "TM"}
_SESSION_SALT = secrets.token_hex(16)


def _new_uid(uid: str, salt: str) -> str:
    if not uid or uid.startswith("1.2.840.10008."):  # standard UIDs (SOP classes, transfer syntaxes) are not PHI
        return uid
    return str(pydicom.uid.generate_uid(entropy_srcs=[salt, uid]))


def _deidentify(ds: Dataset, salt: str) -> None:
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _BLANK:
        if keyword in ds:
            ds.data_element(keyword).value = ""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _deidentify(item, salt)
        elif elem.VR in _DATE_VRS or elem.VR == "PN":
            elem.value = ""
        elif elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [_new_uid(str(v), salt) for v in values]
            elem.value = new if elem.VM > 1 else new[0]


def deidentify_dataset(ds: Dataset, *, salt: str | None = None) -> Dataset:
    """Strip a pydicom dataset of patient data, following the DICOM PS3.15 basic profile (in place).

    Removes private tags and the profile's "X" attributes (institution, physicians, other IDs,
    descriptions, comments, device serials...), empties its "Z" attributes (patient name, ID,
    birth date, sex, accession, study date/time/ID, referring physician), empties every date, time
    and person name left (nested sequences included), and replaces every instance UID by one derived
    from it and ``salt``, so files of one series still share their new Series Instance UID. Burned-in
    text in the pixels is not touched: a warning is logged when ``BurnedInAnnotation`` is YES.

    Args:
        ds: the dataset (``file_meta`` too, when present).
        salt: secret mixed into the new UIDs; the same salt maps one UID to the same new UID across
            calls. Default: one random salt per process (not reproducible across runs).

    Returns:
        ``ds`` itself, with ``PatientIdentityRemoved`` = ``YES`` and ``DeidentificationMethod`` set.

    Example::

        ds = deidentify_dataset(pydicom.dcmread("in.dcm"))
        ds.save_as("out.dcm")
    """
    salt = _SESSION_SALT if salt is None else salt
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        logger.warning("a dataset says patient data may be burned into its pixels: check the images before sharing")
    ds.remove_private_tags()
    _deidentify(ds, salt)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or _new_uid(meta.MediaStorageSOPInstanceUID, salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 basic profile (medmtl)"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds
